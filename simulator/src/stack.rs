//! The local stack: a Postgres, and the services that run on it, in-process.
//!
//! Today the stack is Postgres plus the mock bank. Each service gets its own
//! fresh database on the one Postgres, its own [`Service`] entry (stopped in
//! reverse order of starting) and its URL in [`StackUrls`]; the gateway
//! joins the same way, started after the bank and pointed at its URL.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use anyhow::Context;
use mock_bank::{Application, Settings};
use throwaway_pg::Postgres;
use tokio::task::JoinHandle;

/// Chaos the bank starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BankChaos {
    /// The contract's defaults: 5% of requests fail, 100–2000 ms latency.
    Default,
    /// No faults, no latency.
    Calm,
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// 0 picks a free port.
    pub bank_port: u16,
    pub bank_chaos: BankChaos,
}

/// Where the stack's services listen.
#[derive(Debug, Clone)]
pub struct StackUrls {
    /// The bank's root, e.g. `http://127.0.0.1:8787` (the API is under `/api/v1`).
    pub bank: String,
}

/// An HTTP server running on this process's runtime.
struct Service {
    name: &'static str,
    handle: ServerHandle,
    /// `None` once the server has exited.
    task: Option<JoinHandle<std::io::Result<()>>>,
}

pub struct Stack {
    urls: StackUrls,
    /// In start order.
    services: Vec<Service>,
    /// Declared last so that it is dropped last: dropping a throwaway
    /// cluster stops it and deletes its directory.
    postgres: Postgres,
}

impl Stack {
    /// Gets a Postgres (`DATABASE_URL` or a throwaway cluster), then starts
    /// every service on it. On failure, whatever was started is stopped.
    pub async fn start(options: &StackOptions) -> anyhow::Result<Self> {
        let postgres = tokio::task::spawn_blocking(Postgres::from_env_or_throwaway)
            .await?
            .context("getting a PostgreSQL server")?;
        let mut stack = Self {
            urls: StackUrls {
                bank: String::new(),
            },
            services: Vec::new(),
            postgres,
        };
        match stack.start_bank(options).await {
            Ok(()) => Ok(stack),
            Err(e) => {
                stack.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_bank(&mut self, options: &StackOptions) -> anyhow::Result<()> {
        let database_url = self
            .postgres
            .fresh_database("bank")
            .await
            .context("creating the bank's database")?;
        let mut settings = Settings::local(database_url);
        settings.port = options.bank_port;
        if options.bank_chaos == BankChaos::Default {
            settings.failure_rate = 0.05;
            settings.min_latency_ms = 100;
            settings.max_latency_ms = 2000;
            settings.chaos_seed = None;
        }
        let bank = Application::build(settings).await.with_context(|| {
            format!(
                "starting the mock bank on port {} (--bank-port 0 picks a free port)",
                options.bank_port
            )
        })?;
        self.urls.bank = format!("http://127.0.0.1:{}", bank.port());
        self.services.push(Service {
            name: "mock bank",
            handle: bank.handle(),
            task: Some(tokio::spawn(bank.run_until_stopped())),
        });
        Ok(())
    }

    pub fn urls(&self) -> &StackUrls {
        &self.urls
    }

    /// One sentence saying where the database came from.
    pub fn database(&self) -> String {
        self.postgres.describe()
    }

    /// Resolves when a service stops by itself (a crash, or a signal it
    /// handled), naming it and how it ended. Cancel-safe.
    pub async fn exited(&mut self) -> String {
        let running = self
            .services
            .iter_mut()
            .filter_map(|s| Some((s.name, s.task.as_mut()?)))
            .map(|(name, task)| Box::pin(async move { (name, task.await) }));
        let running: Vec<_> = running.collect();
        if running.is_empty() {
            return std::future::pending().await;
        }
        let ((name, result), _, _) = futures_util::future::select_all(running).await;
        let how = match result {
            Ok(Ok(())) => "stopped".to_owned(),
            Ok(Err(e)) => format!("failed: {e}"),
            Err(e) => format!("panicked: {e}"),
        };
        if let Some(service) = self.services.iter_mut().find(|s| s.name == name) {
            service.task = None;
        }
        format!("the {name} {how}")
    }

    /// Stops the services gracefully, newest first (in-flight requests
    /// finish), then lets go of Postgres, which removes a throwaway cluster.
    pub async fn shutdown(mut self) {
        while let Some(service) = self.services.pop() {
            service.handle.stop(true).await;
            if let Some(task) = service.task {
                // The handle has asked it to stop; its own grace period bounds this.
                match tokio::time::timeout(Duration::from_secs(60), task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => eprintln!("the {} stopped with an error: {e}", service.name),
                    Ok(Err(e)) => eprintln!("the {} panicked: {e}", service.name),
                    Err(_) => eprintln!("the {} did not stop in time", service.name),
                }
            }
        }
        let postgres = self.postgres;
        tokio::task::spawn_blocking(move || drop(postgres))
            .await
            .ok();
    }
}
