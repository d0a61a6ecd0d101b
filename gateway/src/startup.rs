//! Building and running the gateway: pool, migrations, bank client,
//! HTTP server, and the idempotency-key purge.

use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::web::{self, Data};
use actix_web::{App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::bank::{BankClient, CircuitSettings};
use crate::config::Settings;
use crate::faults::{Faults, Mutant};
use crate::idempotency::Fingerprinter;
use crate::payments::Gateway;
use crate::store::batch::Pressure;
use crate::webhooks::{WebhookSettings, delivery};
use crate::{api, idempotency, recovery, store, telemetry};

/// What every handler shares.
pub struct AppState {
    pub gateway: Gateway,
    /// What makes two requests with one Idempotency-Key the same request.
    pub fingerprinter: Fingerprinter,
    pub body: api::request::BodyLimits,
    pub max_header_bytes: usize,
    /// Proxies whose `X-Forwarded-For` names the client (`api::client`).
    pub trusted_proxies: Vec<IpAddr>,
    /// Per API key; `None` when rate limiting is off.
    pub rate_limiter: Option<api::rate_limit::RateLimiter>,
    /// Failed authentications per client address; `None` when off.
    pub auth_failure_limiter: Option<api::rate_limit::AddressLimiter>,
    /// API keys that authenticated lately; `None` when every request looks
    /// its key up.
    pub key_cache: Option<api::key_cache::KeyCache>,
    /// Key lookups in flight, shared by the requests presenting that key.
    pub key_lookups: api::key_cache::Lookups,
    pub webhooks: Arc<WebhookSettings>,
}

pub struct Application {
    port: u16,
    operator_port: u16,
    server: Server,
    /// `/metrics`, `/ready` and `/health`, on a listener of its own.
    operator: Server,
    background: Vec<JoinHandle<()>>,
    gateway: Gateway,
}

impl Application {
    /// Connects, migrates and binds; serving starts with
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let pool = store::connect_within(
            &settings.database_url,
            settings.db_pool_size,
            Duration::from_millis(settings.db_acquire_timeout_ms),
            Duration::from_millis(settings.db_connect_timeout_ms),
        )
        .await?;
        let migrated = store::migrate(&pool).await?;
        tracing::info!(
            total = migrated.total,
            applied_now = migrated.applied_now,
            latest = %migrated.latest,
            "{migrated}"
        );
        // The recorder first, so that the breaker's initial state is on it.
        let prometheus = Data::new(telemetry::prometheus());
        telemetry::register_metrics();
        let bank = BankClient::new(
            &settings.bank_url,
            settings.retry_policy(),
            settings.bank_max_in_flight,
            CircuitSettings {
                failure_threshold: settings.circuit_failure_threshold,
                open_for: Duration::from_millis(settings.circuit_open_ms),
            },
        )?;
        let faults = Faults::from_settings(&settings.faults())?;
        let bank = bank.with_faults(faults.clone());
        let (gateway, flushers) = Gateway::spawn(
            pool.clone(),
            bank,
            settings.leases(),
            settings.batch_limits(),
            faults,
        );
        let webhooks = Arc::new(settings.webhooks());
        // Before serving: the first settlement must already write the
        // database's time.
        gateway.clock().measure(&pool).await?;
        let state = Data::new(AppState {
            gateway: gateway.clone(),
            fingerprinter: settings.fingerprinter(),
            body: api::request::BodyLimits {
                max_bytes: settings.max_body_bytes,
                read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
            },
            max_header_bytes: settings.max_header_bytes,
            trusted_proxies: settings.trusted_proxies.clone(),
            rate_limiter: api::rate_limit::RateLimiter::new(
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
                api::rate_limit::MAX_TRACKED_KEYS,
            ),
            auth_failure_limiter: api::rate_limit::RateLimiter::new(
                settings.auth_failure_limit_per_second,
                settings.auth_failure_limit_burst,
                api::rate_limit::MAX_TRACKED_ADDRESSES,
            ),
            key_lookups: api::key_cache::Lookups::default(),
            key_cache: api::key_cache::KeyCache::new(
                Duration::from_millis(settings.api_key_cache_ms),
                api::key_cache::MAX_CACHED_KEYS,
            ),
            webhooks: webhooks.clone(),
        });

        let operator_listener =
            TcpListener::bind((settings.operator_host(), settings.operator_port))?;
        let operator_port = operator_listener.local_addr()?.port();
        let operator = operator_server(
            operator_listener,
            state.clone(),
            prometheus.clone(),
            settings.shutdown_grace_seconds,
        )?;

        let listener = TcpListener::bind((settings.host.as_str(), settings.port))?;
        let port = listener.local_addr()?.port();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(api::request::limit_headers))
                .wrap(from_fn(api::error::shape_bare_errors))
                .wrap(from_fn(api::client::identify))
                .wrap(from_fn(telemetry::observe))
                .app_data(state.clone())
                .configure(api::routes)
                .default_service(web::to(api::no_route))
        })
        .backlog(4096)
        .client_request_timeout(Duration::from_millis(settings.client_request_timeout_ms))
        // The binary handles SIGINT and SIGTERM itself, both gracefully.
        .disable_signals()
        .shutdown_timeout(settings.shutdown_grace_seconds)
        .listen(listener)?;
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let mut background = vec![
            tokio::spawn(gateway.clock().clone().measure_forever(pool.clone())),
            tokio::spawn(purge_keys_forever(
                gateway.clone(),
                Duration::from_secs(settings.idempotency_retention_seconds),
                Duration::from_millis(settings.idempotency_purge_interval_ms),
            )),
            tokio::spawn(recovery::recover_forever(
                gateway.clone(),
                settings.recovery(),
            )),
            tokio::spawn(recovery::expire_forever(
                gateway.clone(),
                Duration::from_millis(settings.expiry_sweep_interval_ms),
                settings.recovery_batch,
            )),
        ];
        background.extend(flushers);
        background.extend(
            spawn_delivery(
                &settings,
                webhooks,
                gateway.pressure(),
                gateway.faults().clone(),
            )
            .await?,
        );
        if settings.reconcile_interval_ms > 0 {
            background.push(tokio::spawn(crate::reconcile::run_forever(
                gateway.pool().clone(),
                gateway.bank().clone(),
                gateway.instance(),
                settings.reconcile_cadence(),
            )));
        }
        Ok(Self {
            port,
            operator_port,
            server: server.run(),
            operator,
            background,
            gateway,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This process's instance id (it holds leases under it).
    pub fn instance(&self) -> uuid::Uuid {
        self.gateway.instance()
    }

    /// This gateway's fault points, for a test to arm and watch.
    pub fn faults(&self) -> Faults {
        self.gateway.faults().clone()
    }

    /// The operator listener's port: `/metrics`, `/ready`, `/health`.
    pub fn operator_port(&self) -> u16 {
        self.operator_port
    }

    /// Stops the API's server from elsewhere; `stop(true)` lets in-flight
    /// requests finish. The operator listener stops after it.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then stops the background work and hands back
    /// this process's leases: whatever is still unknown is left, whole, for
    /// recovery by another replica or by this one restarted. The operator
    /// listener keeps answering while the API drains, so that a scrape sees
    /// the stop.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let operator_handle = self.operator.handle();
        let operator = tokio::spawn(self.operator);
        let result = self.server.await;
        operator_handle.stop(true).await;
        match operator.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the operator listener failed"),
            Err(e) => tracing::warn!(error = %e, "the operator listener's task failed"),
        }
        // Aborted, and gone, before the leases are handed back: a task
        // still running could start a bank call after the list of calls
        // possibly open was read (a dropped call stays on that list).
        self.background.iter().for_each(JoinHandle::abort);
        for task in self.background {
            let _ = task.await;
        }
        match self.gateway.release_leases().await {
            Ok(released) => tracing::info!(
                operations = released.operations,
                keys = released.keys,
                reconcile_turn = released.reconcile_turn,
                "leases released"
            ),
            Err(e) => tracing::warn!(error = %e, "could not release leases; they will expire"),
        }
        result
    }
}

/// The webhook delivery workers, on a pool of their own so that a slow or
/// failing receiver never takes a connection a payment needs. Without a
/// webhook key nothing can be signed, so nothing is sent.
async fn spawn_delivery(
    settings: &Settings,
    webhooks: Arc<WebhookSettings>,
    payments: Pressure,
    faults: Faults,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(key) = webhooks.key.clone() else {
        tracing::info!(
            "WEBHOOK_SECRET_KEY is unset: webhook endpoints cannot be registered and nothing is delivered"
        );
        return Ok(None);
    };
    let pool = store::connect(
        &settings.database_url,
        settings.webhook_db_pool_size,
        Duration::from_millis(settings.db_acquire_timeout_ms),
    )
    .await?;
    Ok(Some(tokio::spawn(delivery::deliver_forever(
        pool, webhooks, key, payments, faults,
    ))))
}

/// The operator listener: its own server with one worker, so that a flood
/// on the API's workers does not keep a scrape or a readiness probe waiting.
fn operator_server(
    listener: TcpListener,
    state: Data<AppState>,
    prometheus: Data<PrometheusHandle>,
    shutdown_grace_seconds: u64,
) -> std::io::Result<Server> {
    // Observed like the API (a 503 from /ready is a series an alert reads).
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(from_fn(api::client::identify))
            .wrap(from_fn(telemetry::observe))
            .app_data(state.clone())
            .app_data(prometheus.clone())
            .configure(api::operator_routes)
            .default_service(web::to(api::no_operator_route))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(shutdown_grace_seconds)
    .listen(listener)?
    .run())
}

/// Deletes answered idempotency keys past their retention, periodically.
async fn purge_keys_forever(gateway: Gateway, retention: Duration, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    let from_creation = gateway.faults().mutant(Mutant::PurgeFromCreation);
    loop {
        ticker.tick().await;
        let purged = async {
            let mut conn = gateway.pool().acquire().await?;
            idempotency::purge_in_batches(&mut conn, retention, from_creation).await
        };
        match purged.await {
            Ok(purged) if purged.keys == 0 => {}
            Ok(purged) => tracing::info!(
                purged = purged.keys,
                statements = purged.statements,
                "purged expired idempotency keys"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "idempotency key purge failed; retrying next tick")
            }
        }
    }
}
