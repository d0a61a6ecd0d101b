//! Settings, from flags or the environment (the original's variable names).

use clap::Parser;

use crate::chaos::ChaosConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mock-bank",
    version,
    about = "A chaotic acquiring bank for testing payment gateways"
)]
pub struct Settings {
    /// Postgres URL; the bank applies its migrations and seeds test cards at start.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port.
    #[arg(long, env = "PORT", default_value_t = 8787)]
    pub port: u16,
    /// Share of API requests answered 500 before doing anything.
    #[arg(long, env = "FAILURE_RATE", default_value_t = 0.05)]
    pub failure_rate: f64,
    #[arg(long, env = "MIN_LATENCY_MS", default_value_t = 100)]
    pub min_latency_ms: u64,
    #[arg(long, env = "MAX_LATENCY_MS", default_value_t = 2000)]
    pub max_latency_ms: u64,
    #[arg(long, env = "ERROR_AFTER_COMMIT_RATE", default_value_t = 0.0)]
    pub error_after_commit_rate: f64,
    #[arg(long, env = "TIMEOUT_RATE", default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// How long a "timeout" fault holds its response.
    #[arg(long, env = "TIMEOUT_MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
    #[arg(long, env = "RESET_RATE", default_value_t = 0.0)]
    pub reset_rate: f64,
    /// Share of API requests answered by a "proxy" (408, 429, 502, 503 or
    /// 504) before doing anything.
    #[arg(long, env = "PROXY_ERROR_RATE", default_value_t = 0.0)]
    pub proxy_error_rate: f64,
    /// Share of API requests done, then answered with a body cut short.
    #[arg(long, env = "TRUNCATE_RATE", default_value_t = 0.0)]
    pub truncate_rate: f64,
    /// Share of API requests done, then answered with a body sent slowly.
    #[arg(long, env = "TRICKLE_RATE", default_value_t = 0.0)]
    pub trickle_rate: f64,
    /// How long a trickled body takes to arrive.
    #[arg(long, env = "TRICKLE_MS", default_value_t = 5_000)]
    pub trickle_ms: u64,
    /// Seeds the fault generator; random (and shown by GET /admin/chaos) when unset.
    #[arg(long, env = "CHAOS_SEED")]
    pub chaos_seed: Option<u64>,
    /// Lifetime of an authorization.
    #[arg(long, env = "AUTH_EXPIRY_HOURS", default_value_t = 168)]
    pub auth_expiry_hours: u32,
    /// How often the sweeper releases the holds of expired authorizations.
    #[arg(long, env = "EXPIRY_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub expiry_sweep_interval_ms: u64,
    /// Authorizations expired per sweeper transaction.
    #[arg(long, env = "EXPIRY_SWEEP_BATCH", default_value_t = 100)]
    pub expiry_sweep_batch: i64,
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 32)]
    pub db_pool_size: u32,
    /// How long a request waits for a pooled connection before failing.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 5000)]
    pub db_acquire_timeout_ms: u64,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// HTTP worker threads; 0 means one per core.
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,
}

/// The longest authorization lifetime that can be set: ten years.
pub const MAX_AUTH_EXPIRY_HOURS: u32 = 10 * 366 * 24;

impl Settings {
    /// A bank on a free local port with no faults and no latency, for tests
    /// and the launcher; change what you need.
    pub fn local(database_url: impl Into<String>) -> Self {
        let calm = ChaosConfig::calm(0);
        Self {
            database_url: database_url.into(),
            host: "127.0.0.1".into(),
            port: 0,
            failure_rate: calm.failure_rate,
            min_latency_ms: calm.min_latency_ms,
            max_latency_ms: calm.max_latency_ms,
            error_after_commit_rate: calm.error_after_commit_rate,
            timeout_rate: calm.timeout_rate,
            timeout_ms: calm.timeout_ms,
            reset_rate: calm.reset_rate,
            proxy_error_rate: calm.proxy_error_rate,
            truncate_rate: calm.truncate_rate,
            trickle_rate: calm.trickle_rate,
            trickle_ms: calm.trickle_ms,
            chaos_seed: Some(calm.seed),
            auth_expiry_hours: 168,
            expiry_sweep_interval_ms: 1000,
            expiry_sweep_batch: 100,
            db_pool_size: 32,
            db_acquire_timeout_ms: 5000,
            shutdown_grace_seconds: 30,
            workers: 0,
        }
    }

    /// Refuses settings that would stop the bank's own work or overflow
    /// its clock: the sweeper needs a period and a batch, and an
    /// authorization's lifetime must fit a timestamp (at most ten years).
    pub fn validate(&self) -> Result<(), String> {
        if self.expiry_sweep_interval_ms == 0 || self.expiry_sweep_batch < 1 {
            return Err(
                "EXPIRY_SWEEP_INTERVAL_MS and EXPIRY_SWEEP_BATCH must be at least 1: \
                 without them no hold would ever be released"
                    .into(),
            );
        }
        if self.auth_expiry_hours > MAX_AUTH_EXPIRY_HOURS {
            return Err(format!(
                "AUTH_EXPIRY_HOURS must be at most {MAX_AUTH_EXPIRY_HOURS} (ten years)"
            ));
        }
        Ok(())
    }

    pub fn chaos(&self) -> ChaosConfig {
        ChaosConfig {
            failure_rate: self.failure_rate,
            min_latency_ms: self.min_latency_ms,
            max_latency_ms: self.max_latency_ms,
            error_after_commit_rate: self.error_after_commit_rate,
            timeout_rate: self.timeout_rate,
            timeout_ms: self.timeout_ms,
            reset_rate: self.reset_rate,
            outage_seconds: 0,
            seed: self.chaos_seed.unwrap_or_else(rand::random),
            proxy_error_rate: self.proxy_error_rate,
            truncate_rate: self.truncate_rate,
            trickle_rate: self.trickle_rate,
            trickle_ms: self.trickle_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Each chaos setting's flag, environment variable and default.
    #[test]
    fn network_faults_are_off_unless_their_variables_say_otherwise() {
        let command = Settings::command();
        for (id, env, default) in [
            ("proxy_error_rate", "PROXY_ERROR_RATE", "0"),
            ("truncate_rate", "TRUNCATE_RATE", "0"),
            ("trickle_rate", "TRICKLE_RATE", "0"),
            ("trickle_ms", "TRICKLE_MS", "5000"),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("{id} is a setting"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env), "{id}");
            assert_eq!(
                arg.get_default_values()
                    .iter()
                    .map(|v| v.to_str())
                    .collect::<Vec<_>>(),
                [Some(default)],
                "{id}"
            );
        }
        let calm = ChaosConfig::calm(0);
        let local = Settings::local("postgres://unused").chaos();
        assert_eq!(
            (
                local.proxy_error_rate,
                local.truncate_rate,
                local.trickle_rate,
                local.trickle_ms
            ),
            (
                calm.proxy_error_rate,
                calm.truncate_rate,
                calm.trickle_rate,
                calm.trickle_ms
            )
        );
        assert_eq!(calm.trickle_ms, 5_000);
    }
}
