//! Upstream accounts and the weighted, sticky pool of each service.
//!
//! Picking: a request that names a conversation (sticky key) goes to the same healthy
//! account every time, by weighted rendezvous hashing, so a conversation keeps its prompt
//! cache and moves only when its account cools down; other requests spread by weight.
//! An account that answers 429, 5xx or an authentication failure cools down for a while
//! and comes back on its own when the cooldown ends (no probe task needed: the check is
//! made at pick time). When every account is cooling down, the one that recovers first is
//! tried rather than refusing outright.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_core::Service;

/// An upstream credential in memory (sealed at rest; see [`super::crypto`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// Wrap a plaintext credential.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The plaintext, to put in an upstream request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why an account is cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429: the account's own rate limit; honour `Retry-After` when given.
    RateLimited(Option<Duration>),
    /// 5xx, 529, a connect error or a timeout.
    Unavailable,
    /// 401 / 403: the credential is refused.
    Unauthorized,
}

/// Cooldown lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// After a 429 without `Retry-After`.
    pub rate_limited: Duration,
    /// First cooldown after a 5xx or connect failure; doubles with each consecutive one.
    pub unavailable_base: Duration,
    /// Longest cooldown after repeated 5xx.
    pub unavailable_max: Duration,
    /// After 401 / 403.
    pub unauthorized: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        Self {
            rate_limited: Duration::from_secs(30),
            unavailable_base: Duration::from_secs(5),
            unavailable_max: Duration::from_secs(300),
            unauthorized: Duration::from_secs(600),
        }
    }
}

/// One upstream account.
#[derive(Debug)]
pub struct Account {
    /// Unique name.
    pub name: String,
    /// The API it serves.
    pub service: Service,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// `base_url` split once, so a request only appends its path (parsing the whole URL
    /// cost more than anything else in building a request). `None` when it is not an
    /// absolute http(s) URL; requests then fail without being sent.
    pub(crate) parsed_url: Option<super::client::UpstreamBase>,
    /// The credential.
    pub credential: Credential,
    /// Share of traffic.
    pub weight: u32,
    cooldown_until_ms: AtomicI64,
    failures: AtomicU32,
    /// `relay_upstream_seconds` for this account's 200s, looked up once.
    ok_latency: std::sync::OnceLock<metrics::Histogram>,
}

impl Account {
    /// A healthy account.
    pub fn new(
        name: impl Into<String>,
        service: Service,
        base_url: impl Into<String>,
        credential: Credential,
        weight: u32,
    ) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self {
            name: name.into(),
            service,
            parsed_url: super::client::UpstreamBase::parse(&base_url),
            base_url,
            credential,
            weight: weight.max(1),
            cooldown_until_ms: AtomicI64::new(0),
            failures: AtomicU32::new(0),
            ok_latency: std::sync::OnceLock::new(),
        }
    }

    /// Record the latency of an upstream answer with status 200.
    pub fn record_ok_latency(&self, elapsed: Duration) {
        self.ok_latency
            .get_or_init(|| crate::metrics::upstream_ok(self.service, &self.name))
            .record(elapsed.as_secs_f64());
    }

    /// Usable at `now_ms`?
    pub fn is_healthy(&self, now_ms: i64) -> bool {
        self.cooldown_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// When the current cooldown ends (ms since the epoch; 0 or past when healthy).
    pub fn cooldown_until_ms(&self) -> i64 {
        self.cooldown_until_ms.load(Ordering::Relaxed)
    }

    /// Record a success: consecutive failures reset.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Record a failure and start a cooldown; returns its length.
    pub fn record_failure(
        &self,
        failure: Failure,
        policy: &CooldownPolicy,
        now_ms: i64,
    ) -> Duration {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let length = match failure {
            Failure::RateLimited(Some(d)) => {
                d.clamp(Duration::from_secs(1), Duration::from_secs(600))
            }
            Failure::RateLimited(None) => policy.rate_limited,
            Failure::Unauthorized => policy.unauthorized,
            Failure::Unavailable => {
                let factor = 1u32 << (n.saturating_sub(1)).min(16);
                policy
                    .unavailable_base
                    .saturating_mul(factor)
                    .min(policy.unavailable_max)
            }
        };
        let until = now_ms.saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX));
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
        length
    }
}

/// The accounts of one service.
#[derive(Debug, Default)]
pub struct Pool {
    accounts: Vec<Arc<Account>>,
    counter: AtomicU64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: cheap, well-spread bits for picking.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

impl Pool {
    /// A pool of `accounts`.
    pub fn new(accounts: Vec<Arc<Account>>) -> Self {
        Self {
            accounts,
            counter: AtomicU64::new(0),
        }
    }

    /// The accounts.
    pub fn accounts(&self) -> &[Arc<Account>] {
        &self.accounts
    }

    /// Pick an account not in `tried` (indexes into [`accounts`](Self::accounts)).
    /// `None` when every account was tried.
    pub fn pick(&self, sticky: Option<&str>, tried: &[usize], now_ms: i64) -> Option<usize> {
        let candidates = || {
            self.accounts
                .iter()
                .enumerate()
                .filter(|(i, _)| !tried.contains(i))
        };
        let healthy_weight: u64 = candidates()
            .filter(|(_, a)| a.is_healthy(now_ms))
            .map(|(_, a)| u64::from(a.weight))
            .sum();
        if healthy_weight == 0 {
            // Everyone left is cooling down: try whoever recovers first.
            return candidates()
                .min_by_key(|(_, a)| a.cooldown_until_ms())
                .map(|(i, _)| i);
        }
        if let Some(key) = sticky {
            // Weighted rendezvous hashing: score = -ln(u) / weight, lowest wins.
            let seed = fnv1a(key.as_bytes(), 0);
            return candidates()
                .filter(|(_, a)| a.is_healthy(now_ms))
                .map(|(i, a)| {
                    let h = fnv1a(a.name.as_bytes(), seed);
                    // u in (0, 1]: never 0, so ln is finite.
                    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    (i, -u.ln() / f64::from(a.weight))
                })
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .map(|(i, _)| i);
        }
        let mut r = mix(self.counter.fetch_add(1, Ordering::Relaxed)) % healthy_weight;
        for (i, a) in candidates().filter(|(_, a)| a.is_healthy(now_ms)) {
            let w = u64::from(a.weight);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

/// One pool per service. The set is swapped whole by [`Pools::reload`] (admin changes to
/// upstream accounts); a request keeps the pool it picked from, so a reload never
/// disturbs one in flight.
#[derive(Debug)]
pub struct Pools {
    current: arc_swap::ArcSwap<PoolSet>,
}

#[derive(Debug, Default)]
struct PoolSet {
    anthropic: Arc<Pool>,
    openai: Arc<Pool>,
    gemini: Arc<Pool>,
}

impl PoolSet {
    fn new(accounts: &[Arc<Account>]) -> Self {
        let of = |s: Service| {
            Arc::new(Pool::new(
                accounts
                    .iter()
                    .filter(|a| a.service == s)
                    .cloned()
                    .collect(),
            ))
        };
        Self {
            anthropic: of(Service::Anthropic),
            openai: of(Service::Openai),
            gemini: of(Service::Gemini),
        }
    }
}

impl Default for Pools {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Pools {
    /// Group `accounts` by service.
    pub fn new(accounts: &[Arc<Account>]) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(PoolSet::new(accounts)),
        }
    }

    /// The pool of `service` as it is now (one atomic load and a reference count).
    pub fn pool(&self, service: Service) -> Arc<Pool> {
        let set = self.current.load();
        Arc::clone(match service {
            Service::Anthropic => &set.anthropic,
            Service::Openai => &set.openai,
            Service::Gemini => &set.gemini,
        })
    }

    /// Every account.
    pub fn all(&self) -> Vec<Arc<Account>> {
        let set = self.current.load();
        set.anthropic
            .accounts()
            .iter()
            .chain(set.openai.accounts())
            .chain(set.gemini.accounts())
            .cloned()
            .collect()
    }

    /// Replace the accounts. An account whose name, service, URL, credential and weight
    /// are unchanged is kept as it is (with its cooldown), so a reload does not hand
    /// requests back to an account that is cooling down.
    pub fn reload(&self, accounts: &[Arc<Account>]) {
        let old = self.all();
        let merged: Vec<Arc<Account>> = accounts
            .iter()
            .map(|a| {
                old.iter()
                    .find(|o| {
                        o.name == a.name
                            && o.service == a.service
                            && o.base_url == a.base_url
                            && o.weight == a.weight
                            && o.credential.expose() == a.credential.expose()
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::clone(a))
            })
            .collect();
        self.current.store(Arc::new(PoolSet::new(&merged)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Pool {
        Pool::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    Arc::new(Account::new(
                        format!("a{i}"),
                        Service::Anthropic,
                        "http://x",
                        Credential::new("k"),
                        *w,
                    ))
                })
                .collect(),
        )
    }

    #[test]
    fn spreads_by_weight() {
        let p = pool(&[1, 3]);
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            counts[p.pick(None, &[], 0).unwrap()] += 1;
        }
        // 1:3 split, loosely (the picker is a hash of a counter, not a true RNG).
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        assert!((2800..3200).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn sticky_keys_stay_and_move_only_when_their_account_cools() {
        let p = pool(&[1, 1, 1]);
        let policy = CooldownPolicy::default();
        let mut homes = std::collections::HashMap::new();
        for s in 0..300 {
            let key = format!("conversation-{s}");
            let first = p.pick(Some(&key), &[], 0).unwrap();
            assert_eq!(p.pick(Some(&key), &[], 0), Some(first));
            homes.insert(key, first);
        }
        // Every account is somebody's home.
        for i in 0..3 {
            assert!(homes.values().filter(|h| **h == i).count() > 50);
        }
        p.accounts()[0].record_failure(Failure::Unavailable, &policy, 0);
        for (key, home) in &homes {
            let now = p.pick(Some(key), &[], 1).unwrap();
            if *home == 0 {
                assert_ne!(now, 0);
            } else {
                assert_eq!(
                    now, *home,
                    "a conversation moved although its account is healthy"
                );
            }
        }
        // After the cooldown, conversations return home.
        let later = 5_001;
        for (key, home) in &homes {
            assert_eq!(p.pick(Some(key), &[], later), Some(*home));
        }
    }

    #[test]
    fn cooldowns_grow_recover_and_respect_retry_after() {
        let policy = CooldownPolicy::default();
        let a = Account::new("a", Service::Openai, "http://x/", Credential::new("k"), 1);
        assert_eq!(a.base_url, "http://x");
        assert_eq!(
            a.record_failure(Failure::Unavailable, &policy, 0),
            Duration::from_secs(5)
        );
        assert_eq!(
            a.record_failure(Failure::Unavailable, &policy, 0),
            Duration::from_secs(10)
        );
        assert!(!a.is_healthy(9_999));
        assert!(a.is_healthy(10_000));
        a.record_success();
        assert_eq!(
            a.record_failure(Failure::Unavailable, &policy, 20_000),
            Duration::from_secs(5)
        );
        for _ in 0..40 {
            a.record_failure(Failure::Unavailable, &policy, 0);
        }
        assert_eq!(
            a.record_failure(Failure::Unavailable, &policy, 0),
            policy.unavailable_max
        );
        let b = Account::new("b", Service::Openai, "http://x", Credential::new("k"), 1);
        assert_eq!(
            b.record_failure(
                Failure::RateLimited(Some(Duration::from_secs(7))),
                &policy,
                0
            ),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.record_failure(Failure::Unauthorized, &policy, 0),
            policy.unauthorized
        );
        assert!(format!("{:?}", b.credential) == "***");
    }

    #[test]
    fn skips_tried_and_falls_back_to_first_recovering() {
        let p = pool(&[1, 1]);
        let policy = CooldownPolicy::default();
        assert_eq!(p.pick(None, &[0], 0), Some(1));
        assert_eq!(p.pick(None, &[0, 1], 0), None);
        p.accounts()[0].record_failure(Failure::Unauthorized, &policy, 0);
        p.accounts()[1].record_failure(Failure::Unavailable, &policy, 0);
        assert_eq!(p.pick(None, &[], 0), Some(1), "the one recovering first");
        assert_eq!(Pool::default().pick(None, &[], 0), None);
    }
}
