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

// Looked up on every request: a fast seeded hash, not SipHash.
use foldhash::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use relay_core::Service;

use crate::upstream::Pools;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their summaries when nobody scrapes
/// (the recorder keeps raw samples until then, which would grow without bound).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Install the process-wide recorder (once; later calls return the same handle). `None`
/// when another recorder was installed first by the embedding program.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("relay-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "metrics upkeep thread not started; histograms drain at scrape time only");
            }
            Some(handle)
        })
        .clone()
}

// Handles are looked up once per label set and kept: a lookup through the `counter!`
// macro builds the key (allocating its labels) and hashes it on every call, which was a
// visible share of a relayed request's cost. Label sets are bounded (routes, statuses,
// accounts, priced models), so the caches are too.

/// Count an answered request.
pub fn request(route: &'static str, status: u16) {
    static CACHE: OnceLock<RwLock<HashMap<(&'static str, u16), Counter>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.read().get(&(route, status)) {
        c.increment(1);
        return;
    }
    let c =
        metrics::counter!("relay_requests_total", "route" => route, "status" => status.to_string());
    c.increment(1);
    cache.write().insert((route, status), c);
}

/// Count an answer by route and status, and a 4xx of an LLM route as a denial by reason.
pub fn answered(route: &'static str, status: u16) {
    request(route, status);
    if is_llm_route(route) {
        match status {
            401 => denial("unauthenticated"),
            402 => denial("payment"),
            403 => denial("forbidden"),
            429 => denial("rate_limited"),
            _ => {}
        }
    }
}

/// Whether a [`route_label`] is one of the LLM routes (whose 4xx answers are denials).
fn is_llm_route(route: &str) -> bool {
    !matches!(
        route,
        "/healthz" | "/readyz" | "/metrics" | "/api" | "/webhooks" | "other"
    )
}

/// Count a refusal.
pub fn denial(reason: &'static str) {
    metrics::counter!("relay_denials_total", "reason" => reason).increment(1);
}

/// Record an upstream answer (or `"error"`) and its latency. Relayed answers (200) go
/// through the account's kept handle instead ([`upstream_ok`]).
pub fn upstream_response(service: Service, account: &str, status: &str, elapsed: Duration) {
    metrics::histogram!(
        "relay_upstream_seconds",
        "service" => service.as_str(),
        "account" => account.to_owned(),
        "status" => status.to_owned()
    )
    .record(elapsed.as_secs_f64());
}

/// An account's handle for `relay_upstream_seconds` with status 200, the common case,
/// kept by the account so a relayed request records its latency without building a key.
pub fn upstream_ok(service: Service, account: &str) -> Histogram {
    metrics::histogram!(
        "relay_upstream_seconds",
        "service" => service.as_str(),
        "account" => account.to_owned(),
        "status" => "200"
    )
}

/// The token and cost counters of one model.
struct ModelCounters {
    tokens: [Counter; 5],
    cost: Counter,
}

const TOKEN_KINDS: [&str; 5] = [
    "input",
    "output",
    "cache_write_5m",
    "cache_write_1h",
    "cache_read",
];

type ModelCache = RwLock<HashMap<String, Arc<ModelCounters>>>;

/// Record metered tokens and cost (cost in nano-units of the price currency).
pub fn usage(service: Service, model: &str, usage: &relay_core::Usage, cost_nano: u64) {
    static CACHE: OnceLock<[ModelCache; 3]> = OnceLock::new();
    let caches = CACHE.get_or_init(Default::default);
    let cache = &caches[match service {
        Service::Anthropic => 0,
        Service::Openai => 1,
        Service::Gemini => 2,
    }];
    let found = cache.read().get(model).cloned();
    let counters = match found {
        Some(c) => c,
        None => {
            let c = Arc::new(ModelCounters {
                tokens: TOKEN_KINDS.map(|kind| {
                    metrics::counter!("relay_tokens_total", "service" => service.as_str(), "model" => model.to_owned(), "kind" => kind)
                }),
                cost: metrics::counter!("relay_cost_nano_total", "service" => service.as_str(), "model" => model.to_owned()),
            });
            cache.write().insert(model.to_owned(), Arc::clone(&c));
            c
        }
    };
    let counts = [
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.cache_read_tokens,
    ];
    for (counter, n) in counters.tokens.iter().zip(counts) {
        if n > 0 {
            counter.increment(n);
        }
    }
    counters.cost.increment(cost_nano);
}

/// Count a metered event by how metering ended.
pub fn metered(outcome: &'static str) {
    static CACHE: OnceLock<RwLock<HashMap<&'static str, Counter>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.read().get(outcome) {
        c.increment(1);
        return;
    }
    let c = metrics::counter!("relay_metered_total", "outcome" => outcome);
    c.increment(1);
    cache.write().insert(outcome, c);
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
    use super::{is_llm_route, route_label};

    #[test]
    fn operations_routes_are_not_llm_routes() {
        for route in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api",
            "/webhooks",
            "other",
        ] {
            assert!(!is_llm_route(route), "{route}");
        }
        assert!(is_llm_route(route_label("/v1/messages")));
    }

    #[test]
    fn product_api_paths_share_bounded_labels() {
        assert_eq!(route_label("/api/user/keys"), "/api");
        assert_eq!(route_label("/api/admin/users/usr_1/role"), "/api");
        assert_eq!(route_label("/webhooks/stripe"), "/webhooks");
        assert_eq!(route_label("/apix"), "other");
        assert_eq!(route_label("/v1/messages"), "/v1/messages");
    }
}
