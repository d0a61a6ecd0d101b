//! The local stack: a Postgres, the mock bank on it (in-process), and the
//! gateway on it (a child process, see [`crate::process`]).
//!
//! Each service gets its own fresh database on the one Postgres and its URL
//! in [`StackUrls`]. The bank starts first; the gateway, pointed at it,
//! after. They stop in reverse order: the gateway, the bank, then Postgres.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use anyhow::Context;
use mock_bank::{Application, Settings};
pub use throwaway_pg::Durability;
use throwaway_pg::Postgres;
use tokio::task::JoinHandle;

use crate::process::{GatewayOptions, GatewayProcess};

/// The merchant whose API key the stack creates.
pub const MERCHANT: &str = "ficmart";
/// The merchants of a simulation: FicMart, and another whose payments
/// FicMart must never see.
pub const MERCHANTS: [&str; 2] = [MERCHANT, "otherco"];
/// On shutdown, how long the gateway gets after SIGTERM before SIGKILL
/// (a little more than its own 30 s grace for in-flight requests).
const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(35);

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
    /// `None`: no gateway, only Postgres and the bank.
    pub gateway: Option<GatewayOptions>,
    /// How a throwaway cluster commits (a server at `DATABASE_URL` is as
    /// it is): fast for tests and chaos runs, durable for benchmarks.
    pub durability: Durability,
}

/// Where the stack's services listen.
#[derive(Debug, Clone)]
pub struct StackUrls {
    /// The bank's root, e.g. `http://127.0.0.1:8787` (the API is under `/api/v1`).
    pub bank: String,
    /// The gateway's root, e.g. `http://127.0.0.1:8080`, when it runs.
    pub gateway: Option<String>,
    /// The bank's own database (for checks that read the bank's books).
    pub bank_database: String,
    /// The gateway's database, when the stack runs a gateway.
    pub gateway_database: Option<String>,
}

/// The gateway child and the key it was started with.
pub struct RunningGateway {
    pub process: GatewayProcess,
    /// An API key of [`MERCHANT`].
    pub api_key: String,
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
    gateway: Option<RunningGateway>,
    /// Declared last so that it is dropped last: dropping a throwaway
    /// cluster stops it and deletes its directory.
    postgres: Postgres,
}

impl Stack {
    /// Gets a Postgres (`DATABASE_URL` or a throwaway cluster), then starts
    /// every service on it. On failure, whatever was started is stopped.
    pub async fn start(options: &StackOptions) -> anyhow::Result<Self> {
        let durability = options.durability;
        let postgres =
            tokio::task::spawn_blocking(move || Postgres::from_env_or_throwaway_with(durability))
                .await?
                .context("getting a PostgreSQL server")?;
        let mut stack = Self {
            urls: StackUrls {
                bank: String::new(),
                gateway: None,
                bank_database: String::new(),
                gateway_database: None,
            },
            services: Vec::new(),
            gateway: None,
            postgres,
        };
        let started = async {
            stack.start_bank(options).await?;
            if let Some(gateway) = &options.gateway {
                stack.start_gateway(gateway).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        match started.await {
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
        self.urls.bank_database = database_url.clone();
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

    /// Gives the gateway a fresh database with an API key for [`MERCHANT`]
    /// in it, starts it as a child process, and waits until it is ready.
    async fn start_gateway(&mut self, options: &GatewayOptions) -> anyhow::Result<()> {
        let (database_url, api_key) = self.gateway_database().await?;
        self.urls.gateway_database = Some(database_url.clone());
        let process = GatewayProcess::spawn(&database_url, &self.urls.bank, options)?;
        // Kept before waiting, so that shutdown stops it if it never gets ready.
        let gateway = self.gateway.insert(RunningGateway { process, api_key });
        gateway.process.wait_ready().await.with_context(|| {
            format!(
                "starting the gateway on port {} (--gateway-port 0 picks a free port)",
                options.port
            )
        })?;
        self.urls.gateway = Some(gateway.process.url().to_owned());
        Ok(())
    }

    /// A fresh, migrated gateway database with an API key of [`MERCHANT`]
    /// in it: (its URL, the key). For callers that run gateways themselves
    /// (`simulator run`: several replicas, killed and restarted).
    pub async fn gateway_database(&self) -> anyhow::Result<(String, String)> {
        let (database_url, mut keys) = gateway_database_on(&self.postgres, &[MERCHANT]).await?;
        Ok((database_url, keys.remove(0)))
    }

    /// The server the stack's databases are on.
    pub fn postgres(&self) -> &Postgres {
        &self.postgres
    }

    pub fn urls(&self) -> &StackUrls {
        &self.urls
    }

    /// The gateway, when the stack runs one.
    pub fn gateway(&self) -> Option<&RunningGateway> {
        self.gateway.as_ref()
    }

    pub fn gateway_mut(&mut self) -> Option<&mut RunningGateway> {
        self.gateway.as_mut()
    }

    /// One sentence saying where the database came from.
    pub fn database(&self) -> String {
        self.postgres.describe()
    }

    /// Resolves when a service stops by itself (a crash, or a signal it
    /// handled), naming it and how it ended. Cancel-safe.
    pub async fn exited(&mut self) -> String {
        let (services, gateway) = (&mut self.services, &mut self.gateway);
        let in_process = async {
            let running: Vec<_> = services
                .iter_mut()
                .filter_map(|s| Some((s.name, s.task.as_mut()?)))
                .map(|(name, task)| Box::pin(async move { (name, task.await) }))
                .collect();
            if running.is_empty() {
                return std::future::pending().await;
            }
            let ((name, result), _, _) = futures_util::future::select_all(running).await;
            let how = match result {
                Ok(Ok(())) => "stopped".to_owned(),
                Ok(Err(e)) => format!("failed: {e}"),
                Err(e) => format!("panicked: {e}"),
            };
            (name, how)
        };
        let child = async {
            match gateway {
                Some(gateway) => gateway.process.exited().await,
                None => std::future::pending().await,
            }
        };
        let (name, how) = tokio::select! {
            (name, how) = in_process => (name, how),
            status = child => return match status {
                Ok(status) => format!("the gateway exited ({status})"),
                Err(e) => format!("the gateway could not be waited for: {e}"),
            },
        };
        if let Some(service) = self.services.iter_mut().find(|s| s.name == name) {
            service.task = None;
        }
        format!("the {name} {how}")
    }

    /// Stops the services gracefully, newest first (in-flight requests
    /// finish; the gateway gets SIGTERM, and SIGKILL if it is still there
    /// after [`GATEWAY_STOP_GRACE`]), then lets go of Postgres, which removes a throwaway cluster.
    pub async fn shutdown(mut self) {
        if let Some(mut gateway) = self.gateway.take() {
            match gateway.process.terminate(GATEWAY_STOP_GRACE).await {
                Ok(status) if status.success() => {}
                Ok(status) => eprintln!("the gateway exited with {status}"),
                Err(e) => eprintln!("stopping the gateway: {e:#}"),
            }
        }
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

/// A fresh, migrated gateway database on `postgres` with an API key for
/// each of `merchants`: its URL and the keys, in order.
pub async fn gateway_database_on(
    postgres: &Postgres,
    merchants: &[&str],
) -> anyhow::Result<(String, Vec<String>)> {
    let database_url = postgres
        .fresh_database("gateway")
        .await
        .context("creating the gateway's database")?;
    let mut keys = Vec::new();
    for merchant in merchants {
        keys.push(create_api_key(&database_url, merchant).await?);
    }
    Ok((database_url, keys))
}

/// Applies the gateway's migrations to `database_url` and creates an API key
/// for `merchant` there, as `gateway api-key create` would.
pub async fn create_api_key(database_url: &str, merchant: &str) -> anyhow::Result<String> {
    let pool = gateway::store::connect(database_url, 1, Duration::from_secs(10))
        .await
        .context("connecting to the gateway's database")?;
    let created = async {
        gateway::store::MIGRATOR
            .run(&pool)
            .await
            .context("applying the gateway's migrations")?;
        let mut tx = pool.begin().await?;
        let (_, key) = gateway::store::merchants::create_api_key(&mut tx, merchant)
            .await
            .context("creating an API key")?;
        tx.commit().await?;
        Ok::<_, anyhow::Error>(key)
    }
    .await;
    pool.close().await;
    created
}
