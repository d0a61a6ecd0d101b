//! Building and running the bank: pool, migrations, seed, server, sweeper.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::web::{self, Data};
use actix_web::{App, HttpServer};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;

use crate::chaos::{self, Chaos};
use crate::config::Settings;
use crate::telemetry::{self, InFlight, Tally};
use crate::{api, expiry, operations};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What every handler shares.
pub struct AppState {
    pub pool: PgPool,
    pub authorization_lifetime: chrono::Duration,
}

pub struct Application {
    port: u16,
    server: Server,
    sweeper: JoinHandle<()>,
    in_flight: Data<InFlight>,
    chaos: Data<Chaos>,
}

impl Application {
    /// Connects, migrates, seeds and binds; serving starts with
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate().map_err(anyhow::Error::msg)?;
        // Pinged when given back to the pool (sqlx always does), not again
        // when taken: one round trip fewer per request.
        let pool = PgPoolOptions::new()
            .max_connections(settings.db_pool_size)
            .acquire_timeout(Duration::from_millis(settings.db_acquire_timeout_ms))
            .test_before_acquire(false)
            .connect(&settings.database_url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let mut tx = pool.begin().await?;
        operations::seed_test_cards(&mut tx)
            .await
            .map_err(|e| anyhow::anyhow!("seeding test cards: {e}"))?;
        tx.commit().await?;

        let chaos = Data::new(
            Chaos::new(settings.chaos()).map_err(|e| anyhow::anyhow!("chaos settings: {e}"))?,
        );
        tracing::info!(config = ?chaos.config(), "chaos");
        let state = Data::new(AppState {
            pool: pool.clone(),
            authorization_lifetime: chrono::Duration::hours(settings.auth_expiry_hours.into()),
        });
        let in_flight = Data::new(InFlight::default());
        let tally = Data::new(Tally::default());
        let prometheus = Data::new(telemetry::prometheus());

        let listener = TcpListener::bind((settings.host.as_str(), settings.port))?;
        let port = listener.local_addr()?.port();
        let server = {
            let (chaos, in_flight) = (chaos.clone(), in_flight.clone());
            let mut server = HttpServer::new(move || {
                App::new()
                    .wrap(from_fn(telemetry::observe))
                    .app_data(state.clone())
                    .app_data(chaos.clone())
                    .app_data(in_flight.clone())
                    .app_data(tally.clone())
                    .app_data(prometheus.clone())
                    .configure(api::routes)
                    .default_service(web::to(api::not_found))
            })
            .on_connect(chaos::remember_connection_fd)
            // actix-web treats SIGINT as a forced stop; the binary handles
            // SIGINT and SIGTERM itself, both gracefully (see `main.rs`).
            .disable_signals()
            .backlog(4096)
            .shutdown_timeout(settings.shutdown_grace_seconds)
            .listen(listener)?;
            if settings.workers > 0 {
                server = server.workers(settings.workers);
            }
            server.run()
        };
        let sweeper = tokio::spawn(expiry::sweep_forever(
            pool,
            Duration::from_millis(settings.expiry_sweep_interval_ms),
            settings.expiry_sweep_batch,
        ));
        Ok(Self {
            port,
            server,
            sweeper,
            in_flight,
            chaos,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server from elsewhere (graceful: in-flight requests finish).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn in_flight(&self) -> Data<InFlight> {
        self.in_flight.clone()
    }

    pub fn chaos(&self) -> Data<Chaos> {
        self.chaos.clone()
    }

    /// Serves until SIGTERM/SIGINT or [`ServerHandle::stop`], letting
    /// in-flight requests finish, then stops the sweeper.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.sweeper.abort();
        result
    }
}
