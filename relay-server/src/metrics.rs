//! Prometheus metrics.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `relay_requests_total` | `route`, `status` | every answered request |
//! | `relay_denials_total` | `reason` | requests refused before reaching an upstream |
//! | `relay_upstream_seconds` | `service`, `account`, `status` | time to upstream response headers |
//! | `relay_tokens_total` | `service`, `model`, `kind` | metered tokens |
//! | `relay_cost_nano_total` | `service`, `model` | metered cost in 10^-9 of the price currency (integers: money never becomes a float) |
//! | `relay_upstream_account_up` | `service`, `account` | 1 when the account is not cooling down |

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use relay_core::Service;

use crate::upstream::Pools;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder (once; later calls return the same handle). `None`
/// when another recorder was installed first by the embedding program.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Count an answered request.
pub fn request(route: &'static str, status: u16) {
    metrics::counter!("relay_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
}

/// Count a refusal.
pub fn denial(reason: &'static str) {
    metrics::counter!("relay_denials_total", "reason" => reason).increment(1);
}

/// Record an upstream answer (or `"error"`) and its latency.
pub fn upstream_response(service: Service, account: &str, status: &str, elapsed: Duration) {
    metrics::histogram!(
        "relay_upstream_seconds",
        "service" => service.as_str(),
        "account" => account.to_owned(),
        "status" => status.to_owned()
    )
    .record(elapsed.as_secs_f64());
}

/// Record metered tokens and cost (cost in nano-units of the price currency).
pub fn usage(service: &str, model: &str, usage: &relay_core::Usage, cost_nano: u64) {
    let kinds = [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_write_5m", usage.cache_write_5m_tokens),
        ("cache_write_1h", usage.cache_write_1h_tokens),
        ("cache_read", usage.cache_read_tokens),
    ];
    for (kind, n) in kinds {
        if n > 0 {
            metrics::counter!("relay_tokens_total", "service" => service.to_owned(), "model" => model.to_owned(), "kind" => kind)
                .increment(n);
        }
    }
    metrics::counter!("relay_cost_nano_total", "service" => service.to_owned(), "model" => model.to_owned())
        .increment(cost_nano);
}

/// Set the pool health gauges (called when `/metrics` is scraped).
pub fn pool_health(pools: &Pools) {
    let now = chrono::Utc::now().timestamp_millis();
    for a in pools.all() {
        metrics::gauge!("relay_upstream_account_up", "service" => a.service.as_str(), "account" => a.name.clone())
            .set(if a.is_healthy(now) { 1.0 } else { 0.0 });
    }
}

/// The route label of a path (bounded set, so labels never explode).
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/messages" => "/v1/messages",
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/responses" => "/v1/responses",
        "/v1/models" => "/v1/models",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1beta/models/") && p.ends_with(":streamGenerateContent") => {
            "/v1beta/models/:streamGenerateContent"
        }
        p if p.starts_with("/v1beta/models/") => "/v1beta/models/:generateContent",
        p if p.starts_with("/api/") => "/api",
        p if p.starts_with("/webhooks/") => "/webhooks",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn product_api_paths_share_bounded_labels() {
        assert_eq!(route_label("/api/user/keys"), "/api");
        assert_eq!(route_label("/api/admin/users/usr_1/role"), "/api");
        assert_eq!(route_label("/webhooks/stripe"), "/webhooks");
        assert_eq!(route_label("/apix"), "other");
        assert_eq!(route_label("/v1/messages"), "/v1/messages");
    }
}
