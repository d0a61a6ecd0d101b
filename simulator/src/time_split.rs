//! Where a gateway authorization's time went, from the services' own
//! latency histograms (their sums and counts, read before and after the
//! load), beside what the clients measured: the bank's handler (its added
//! latency included), the hop from the gateway's bank call to it, the
//! gateway's own work around the call, and what lies outside the gateway's
//! handler (the HTTP hops and the load generator). Means over the whole
//! run, in milliseconds; only for a gateway the bench started, whose
//! operator port it knows.

use serde::Serialize;

/// The bank's API route an authorization takes.
const BANK_HANDLER: Series = Series {
    name: "bank_http_request_duration_seconds",
    label: "route=\"/api/v1/authorizations\"",
};
/// The gateway's call to the bank, retries included.
const BANK_CALL: Series = Series {
    name: "gateway_bank_call_duration_seconds",
    label: "operation=\"authorize\"",
};
/// The gateway's handler for `POST /v1/payments`.
const GATEWAY_HANDLER: Series = Series {
    name: "gateway_http_request_duration_seconds",
    label: "route=\"/v1/payments\"",
};

/// One histogram's series, by its name and one of its labels.
#[derive(Debug, Clone, Copy)]
struct Series {
    name: &'static str,
    label: &'static str,
}

/// The sum of the observations (seconds) and their count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Total {
    seconds: f64,
    count: f64,
}

impl Series {
    /// The series's total in a Prometheus text exposition: its `_sum` and
    /// `_count` lines that carry the label, added up.
    fn total(self, exposition: &str) -> Total {
        let value = |suffix: &str| -> f64 {
            let prefix = format!("{}{suffix}{{", self.name);
            exposition
                .lines()
                .filter(|line| line.starts_with(&prefix) && line.contains(self.label))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Total {
            seconds: value("_sum"),
            count: value("_count"),
        }
    }
}

/// The three series at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    bank_handler: Total,
    bank_call: Total,
    gateway_handler: Total,
}

/// Reads the bank's `/metrics` and the gateway's (its operator listener's).
/// `None` when either cannot be read: the report then has no split.
pub async fn sample(
    client: &reqwest::Client,
    bank_url: &str,
    operator_url: &str,
) -> Option<Sample> {
    let bank = exposition(client, bank_url).await?;
    let gateway = exposition(client, operator_url).await?;
    Some(Sample {
        bank_handler: BANK_HANDLER.total(&bank),
        bank_call: BANK_CALL.total(&gateway),
        gateway_handler: GATEWAY_HANDLER.total(&gateway),
    })
}

async fn exposition(client: &reqwest::Client, root: &str) -> Option<String> {
    let response = client.get(format!("{root}/metrics")).send().await.ok()?;
    response.error_for_status().ok()?.text().await.ok()
}

/// Mean milliseconds per authorization, each part of the one before it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimeSplit {
    /// What the clients waited for an answer.
    pub client_ms: f64,
    /// The gateway's handler.
    pub gateway_handler_ms: f64,
    /// The gateway's bank call, retries included.
    pub bank_call_ms: f64,
    /// The bank's handler, its added latency included.
    pub bank_handler_ms: f64,
    /// The latency the bank was told to add.
    pub added_latency_ms: f64,
}

impl TimeSplit {
    /// The split between two samples, with the clients' mean; `None` when
    /// a series saw nothing during the load.
    pub fn between(
        before: &Sample,
        after: &Sample,
        client_ms: f64,
        added_latency_ms: u64,
    ) -> Option<Self> {
        let mean_ms = |before: Total, after: Total| {
            let count = after.count - before.count;
            (count > 0.0).then(|| (after.seconds - before.seconds) / count * 1_000.0)
        };
        Some(Self {
            client_ms,
            gateway_handler_ms: mean_ms(before.gateway_handler, after.gateway_handler)?,
            bank_call_ms: mean_ms(before.bank_call, after.bank_call)?,
            bank_handler_ms: mean_ms(before.bank_handler, after.bank_handler)?,
            added_latency_ms: added_latency_ms as f64,
        })
    }

    /// The bank's handler beyond its added latency.
    pub fn bank_own_ms(&self) -> f64 {
        self.bank_handler_ms - self.added_latency_ms
    }

    /// From the gateway's bank call to the bank's handler and back.
    pub fn hop_ms(&self) -> f64 {
        self.bank_call_ms - self.bank_handler_ms
    }

    /// The gateway's handler around its bank call.
    pub fn gateway_own_ms(&self) -> f64 {
        self.gateway_handler_ms - self.bank_call_ms
    }

    /// The clients' wait beyond the gateway's handler.
    pub fn outside_ms(&self) -> f64 {
        self.client_ms - self.gateway_handler_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "\
# TYPE gateway_http_request_duration_seconds summary
gateway_http_request_duration_seconds_sum{route=\"/health\"} 0.5
gateway_http_request_duration_seconds_count{route=\"/health\"} 3
gateway_http_request_duration_seconds_sum{route=\"/v1/payments\"} 10.6
gateway_http_request_duration_seconds_count{route=\"/v1/payments\"} 10
gateway_bank_call_duration_seconds_sum{operation=\"authorize\"} 10.2
gateway_bank_call_duration_seconds_count{operation=\"authorize\"} 10
gateway_bank_call_duration_seconds_sum{operation=\"capture\"} 99
gateway_bank_call_duration_seconds_count{operation=\"capture\"} 1
";
    const BANK: &str = "\
bank_http_request_duration_seconds_sum{route=\"/api/v1/authorizations\"} 10.1
bank_http_request_duration_seconds_count{route=\"/api/v1/authorizations\"} 10
bank_http_request_duration_seconds_sum{route=\"/admin/accounts\"} 7
bank_http_request_duration_seconds_count{route=\"/admin/accounts\"} 200
";

    fn sample(gateway: &str, bank: &str) -> Sample {
        Sample {
            bank_handler: BANK_HANDLER.total(bank),
            bank_call: BANK_CALL.total(gateway),
            gateway_handler: GATEWAY_HANDLER.total(gateway),
        }
    }

    #[test]
    fn each_part_is_a_mean_over_the_load_of_its_own_series_only() {
        let before = sample("", "");
        let after = sample(GATEWAY, BANK);
        let split = TimeSplit::between(&before, &after, 1_080.0, 1_000).unwrap();
        assert!(
            (split.gateway_handler_ms - 1_060.0).abs() < 1e-9,
            "{split:?}"
        );
        assert!((split.bank_call_ms - 1_020.0).abs() < 1e-9, "{split:?}");
        assert!((split.bank_handler_ms - 1_010.0).abs() < 1e-9, "{split:?}");
        assert!((split.bank_own_ms() - 10.0).abs() < 1e-9);
        assert!((split.hop_ms() - 10.0).abs() < 1e-9);
        assert!((split.gateway_own_ms() - 40.0).abs() < 1e-9);
        assert!((split.outside_ms() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn what_came_before_the_load_is_left_out_and_no_load_is_no_split() {
        let before = sample(GATEWAY, BANK);
        assert_eq!(TimeSplit::between(&before, &before, 1.0, 0), None);
        let doubled = format!(
            "{}{}",
            GATEWAY,
            GATEWAY.replace("/v1/payments\"}", "/v1/payments\",status=\"201\"}")
        );
        let after = sample(&doubled, &format!("{BANK}{BANK}"));
        let split = TimeSplit::between(&before, &after, 1_080.0, 1_000).unwrap();
        assert!(
            (split.gateway_handler_ms - 1_060.0).abs() < 1e-9,
            "{split:?}"
        );
    }
}
