//! The conformance suite every [`Limiter`] backend passes, driven by a manual clock.
//!
//! Each case takes a factory that builds a fresh limiter on the given clock with a lease
//! TTL of [`LEASE_TTL`]. Cases use fresh random key ids, so backends sharing a store (Redis)
//! need no cleanup between cases. [`limiter_conformance_tests!`](crate::limiter_conformance_tests)
//! stamps out one `#[tokio::test]` per case.
//!
//! Settlement outcomes differ by backend: one that applies settlements at once answers
//! [`SettleOutcome::Settled`], and [`SettleOutcome::NotFound`] for a settlement that
//! changes nothing; one that queues them (Redis) answers [`SettleOutcome::Queued`] for
//! both. So the cases check what a settlement did by its effects (counts, budget room,
//! leases in flight), and its answer only as far as every backend agrees.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use relay_core::{
    ApiKeyId, Budget, BudgetPeriod, BudgetSchedule, ClientFamily, Currency, KeyPolicy, ManualClock,
    Money, RateWindow, RequestId, Service, SharedClock,
};
use rust_decimal::Decimal;

use super::{
    admit, cost_units, AdmissionRequest, Denial, Limiter, SettleOutcome, Ticket, WindowCap,
};

/// Lease TTL the factories must configure.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Builds a limiter on a clock.
pub type Factory = Arc<dyn Fn(SharedClock) -> Arc<dyn Limiter> + Send + Sync>;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 10, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn usd(s: &str) -> Money {
    Money::parse(s, Currency::USD).unwrap_or(Money::zero(Currency::USD))
}

struct Fixture {
    clock: ManualClock,
    limiter: Arc<dyn Limiter>,
    key: ApiKeyId,
    policy: Arc<KeyPolicy>,
    /// Every settlement's answer, and whether it should have changed something.
    outcomes: Mutex<Vec<(bool, SettleOutcome)>>,
}

impl Fixture {
    fn new(make: &Factory, policy: KeyPolicy) -> Self {
        Self::at(make, policy, start())
    }

    fn at(make: &Factory, policy: KeyPolicy, at: DateTime<Utc>) -> Self {
        let clock = ManualClock::new(at);
        let limiter = make(Arc::new(clock.clone()));
        Self {
            clock,
            limiter,
            key: ApiKeyId::new(),
            policy: Arc::new(policy),
            outcomes: Mutex::new(Vec::new()),
        }
    }

    fn advance(&self, ms: i64) {
        self.clock.advance(chrono::Duration::milliseconds(ms));
    }

    async fn try_admit(&self, tokens: u64, cost: &str) -> Result<Ticket, Denial> {
        let rid = RequestId::new();
        let req = AdmissionRequest {
            key: &self.key,
            policy: &self.policy,
            service: Service::Anthropic,
            model: "claude-sonnet-4-5",
            user_agent: Some("claude-cli/1.0"),
            ip: Some(
                "10.0.0.1"
                    .parse()
                    .unwrap_or(std::net::IpAddr::from([10, 0, 0, 1])),
            ),
            estimated_tokens: tokens,
            estimated_cost: Decimal::from_str_exact(cost).unwrap_or_default(),
            min_cost: Decimal::ZERO,
            request_id: &rid,
        };
        self.limiter.admit(&req).await.expect("limiter answers")
    }

    async fn admit_ok(&self, tokens: u64, cost: &str) -> Ticket {
        match self.try_admit(tokens, cost).await {
            Ok(t) => t,
            Err(d) => panic!("expected admission, got {d:?}"),
        }
    }

    /// Settle a live permit: `Settled`, or `Queued` by a backend that queues settlements.
    async fn settle(&self, t: &Ticket, tokens: u64, cost: &str) {
        self.settle_expecting(true, t, tokens, cost).await;
    }

    /// Settle a permit that is already settled, expired or unknown: nothing may change
    /// (the caller checks the effects), and a backend that answered `Settled` for a live
    /// permit must answer `NotFound`.
    async fn settle_ignored(&self, t: &Ticket, tokens: u64, cost: &str) {
        self.settle_expecting(false, t, tokens, cost).await;
    }

    async fn settle_expecting(&self, live: bool, t: &Ticket, tokens: u64, cost: &str) {
        let units = cost_units(Decimal::from_str_exact(cost).unwrap_or_default());
        let outcome = self
            .limiter
            .settle(t, tokens, units)
            .await
            .expect("limiter answers");
        let mut seen = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        seen.push((live, outcome));
        // Checked over every answer so far: whether the backend settles at once may show
        // only after an ignored settlement.
        let at_once = seen.iter().any(|(_, o)| *o == SettleOutcome::Settled);
        for &(live, o) in seen.iter() {
            match (live, o) {
                (true, SettleOutcome::Settled | SettleOutcome::Queued) => {}
                (false, SettleOutcome::NotFound) => {}
                (false, SettleOutcome::Queued) if !at_once => {}
                _ => panic!(
                    "settlement answers {seen:?} (true = live permit): a live permit is \
                     Settled or Queued, another NotFound, or Queued on a queueing backend"
                ),
            }
        }
    }
}

fn requests_window(secs: u64, max: u64) -> KeyPolicy {
    KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: secs,
            max_requests: Some(max),
            max_tokens: None,
            max_cost: None,
        }],
        ..KeyPolicy::default()
    }
}

/// A request window admits up to its cap, refuses with a retry hint, and frees at the edge.
pub async fn request_window_and_edges(make: Factory) {
    let f = Fixture::new(&make, requests_window(60, 3));
    for _ in 0..3 {
        let t = f.admit_ok(0, "0").await;
        f.settle(&t, 0, "0").await;
    }
    match f.try_admit(0, "0").await {
        Err(Denial::RateLimited {
            window_secs: 60,
            cap: WindowCap::Requests,
            retry_after,
        }) => assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(120)),
        other => panic!("expected a request-window denial, got {other:?}"),
    }
    // The bucket started at 12:00:00. At +90 s the previous bucket's 3 weigh 1.5, counted
    // up to 2: one more fits, a second does not.
    f.advance(90_000);
    f.admit_ok(0, "0").await;
    assert!(f.try_admit(0, "0").await.is_err());
    // Two whole windows later everything has aged out.
    f.advance(120_000);
    for _ in 0..3 {
        f.admit_ok(0, "0").await;
    }
}

/// Token and cost caps count estimates at admission and actuals after settlement.
pub async fn token_and_cost_caps_follow_settlement(make: Factory) {
    let policy = KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: 3600,
            max_requests: None,
            max_tokens: Some(1000),
            max_cost: Some(usd("1")),
        }],
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let t = f.admit_ok(800, "0.5").await;
    match f.try_admit(300, "0.1").await {
        Err(Denial::RateLimited {
            cap: WindowCap::Tokens,
            ..
        }) => {}
        other => panic!("expected a token denial, got {other:?}"),
    }
    // Actual use was far below the estimate: the difference is returned.
    f.settle(&t, 100, "0.05").await;
    let t2 = f.admit_ok(850, "0.9").await;
    match f.try_admit(10, "0.1").await {
        Err(Denial::RateLimited {
            cap: WindowCap::Cost,
            ..
        }) => {}
        other => panic!("expected a cost denial, got {other:?}"),
    }
    // Actual above the estimate is charged too: 0.05 + 0.94 = 0.99 spent.
    f.settle(&t2, 850, "0.94").await;
    assert!(f.try_admit(10, "0.011").await.is_err());
    assert!(f.try_admit(10, "0.01").await.is_ok());
}

/// Settling twice changes nothing (the first settlement counts); settling an unknown
/// permit, or one of another key, changes nothing.
pub async fn settle_is_idempotent_and_unknown_permits_are_ignored(make: Factory) {
    let policy = KeyPolicy {
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: usd("10"),
        }],
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let t = f.admit_ok(0, "4").await;
    f.settle(&t, 0, "1").await;
    // A second settlement with other figures: the first one stands.
    f.settle_ignored(&t, 0, "0").await;
    let mut unknown = t.clone();
    unknown.request_id = RequestId::new();
    f.settle_ignored(&unknown, 0, "0").await;
    let mut other_key = t.clone();
    other_key.key = ApiKeyId::new();
    f.settle_ignored(&other_key, 0, "0").await;
    assert_eq!(f.limiter.in_flight(&other_key.key).await.ok(), Some(0));
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(0));
    // Spent is exactly 1: 9 more fit, 9.01 does not.
    assert!(matches!(
        f.try_admit(0, "9.01").await,
        Err(Denial::Budget {
            period: BudgetPeriod::Total,
            retry_after: None
        })
    ));
    f.admit_ok(0, "9").await;
}

/// The concurrency limit counts live leases; settling frees one.
pub async fn concurrency_leases(make: Factory) {
    let policy = KeyPolicy {
        concurrency: Some(2),
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let a = f.admit_ok(0, "0").await;
    let _b = f.admit_ok(0, "0").await;
    assert!(matches!(
        f.try_admit(0, "0").await,
        Err(Denial::Concurrency { limit: 2, .. })
    ));
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(2));
    f.settle(&a, 0, "0").await;
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(1));
    // Settling it again releases nothing more: b still holds its slot.
    f.settle_ignored(&a, 0, "0").await;
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(1));
    f.admit_ok(0, "0").await;
    assert!(matches!(
        f.try_admit(0, "0").await,
        Err(Denial::Concurrency { limit: 2, .. })
    ));
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(2));
}

/// Leases expire on their own; a heartbeat keeps one alive; an expired one cannot settle.
pub async fn leases_expire_and_heartbeats_extend_them(make: Factory) {
    let policy = KeyPolicy {
        concurrency: Some(1),
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let kept = f.admit_ok(0, "0").await;
    f.advance(40_000);
    assert!(f.limiter.heartbeat(&kept).await.expect("answers"));
    f.advance(40_000);
    // 80 s after admission, 40 s after the heartbeat: still held.
    assert!(f.try_admit(0, "0").await.is_err());
    f.advance(21_000);
    // The lease expired: the slot is free, and the stale ticket changes nothing.
    let fresh = f.admit_ok(0, "0").await;
    assert!(!f.limiter.heartbeat(&kept).await.expect("answers"));
    f.settle_ignored(&kept, 0, "0").await;
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(1));
    assert!(f.try_admit(0, "0").await.is_err());
    f.settle(&fresh, 0, "0").await;
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(0));
    // A settled lease cannot be extended.
    assert!(!f.limiter.heartbeat(&fresh).await.expect("answers"));
    f.admit_ok(0, "0").await;
}

/// A settlement after its lease expired changes nothing: the estimate stays counted.
pub async fn a_late_settlement_keeps_the_reservation(make: Factory) {
    let policy = KeyPolicy {
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: usd("10"),
        }],
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let late = f.admit_ok(0, "4").await;
    let on_time = f.admit_ok(0, "1").await;
    f.settle(&on_time, 0, "0.5").await;
    f.advance(i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX) + 1);
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(0));
    f.settle_ignored(&late, 0, "1").await;
    // Spent: 4 (the late one's estimate) + 0.5.
    assert!(f.try_admit(0, "5.51").await.is_err());
    f.admit_ok(0, "5.5").await;
}

/// A daily budget in Asia/Shanghai resets at local midnight (16:00 UTC).
pub async fn daily_budget_resets_at_local_midnight(make: Factory) {
    let policy = KeyPolicy {
        budgets: vec![Budget {
            period: BudgetPeriod::Daily,
            cap: usd("2"),
        }],
        budget_schedule: BudgetSchedule {
            timezone: chrono_tz::Asia::Shanghai,
            ..BudgetSchedule::default()
        },
        ..KeyPolicy::default()
    };
    let at = Utc
        .with_ymd_and_hms(2026, 5, 10, 15, 59, 0)
        .single()
        .unwrap_or_default();
    let f = Fixture::at(&make, policy, at);
    let t = f.admit_ok(0, "1.5").await;
    f.settle(&t, 0, "1.5").await;
    match f.try_admit(0, "1").await {
        Err(Denial::Budget {
            period: BudgetPeriod::Daily,
            retry_after: Some(wait),
        }) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("expected a daily budget denial, got {other:?}"),
    }
    f.advance(60_000);
    f.admit_ok(0, "1.9").await;
}

/// A weekly budget resets on its day and hour; a monthly one on the 1st.
pub async fn weekly_and_monthly_budgets(make: Factory) {
    let policy = KeyPolicy {
        budgets: vec![
            Budget {
                period: BudgetPeriod::Weekly,
                cap: usd("5"),
            },
            Budget {
                period: BudgetPeriod::Monthly,
                cap: usd("8"),
            },
        ],
        budget_schedule: BudgetSchedule {
            timezone: chrono_tz::America::New_York,
            weekly_reset_day: chrono::Weekday::Wed,
            weekly_reset_hour: 9,
        },
        ..KeyPolicy::default()
    };
    // Tuesday 2026-05-26 12:00 EDT.
    let at = Utc
        .with_ymd_and_hms(2026, 5, 26, 16, 0, 0)
        .single()
        .unwrap_or_default();
    let f = Fixture::at(&make, policy, at);
    f.admit_ok(0, "5").await;
    assert!(matches!(
        f.try_admit(0, "0.5").await,
        Err(Denial::Budget {
            period: BudgetPeriod::Weekly,
            ..
        })
    ));
    // Wednesday 09:00 EDT = 13:00 UTC: new week, same month (5 of 8 spent).
    f.clock.set(
        Utc.with_ymd_and_hms(2026, 5, 27, 13, 0, 0)
            .single()
            .unwrap_or_default(),
    );
    f.admit_ok(0, "3").await;
    assert!(matches!(
        f.try_admit(0, "0.5").await,
        Err(Denial::Budget {
            period: BudgetPeriod::Monthly,
            ..
        })
    ));
    // June 1st, local midnight (04:00 UTC): the month resets, the week (5/27-6/3) does not.
    f.clock.set(
        Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0)
            .single()
            .unwrap_or_default(),
    );
    f.admit_ok(0, "2").await;
    assert!(matches!(
        f.try_admit(0, "0.5").await,
        Err(Denial::Budget {
            period: BudgetPeriod::Weekly,
            ..
        })
    ));
}

/// Model, service, client and address rules refuse without counting anything.
pub async fn static_rules_refuse_without_counting(make: Factory) {
    let policy = KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: 60,
            max_requests: Some(1),
            max_tokens: None,
            max_cost: None,
        }],
        allowed_models: vec!["claude-*".into()],
        services: BTreeSet::from([Service::Anthropic]),
        clients: BTreeSet::from([ClientFamily::ClaudeCode]),
        ip_allow: vec!["10.0.0.0/8".parse().expect("valid net")],
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let rid = RequestId::new();
    let base = AdmissionRequest {
        key: &f.key,
        policy: &f.policy,
        service: Service::Anthropic,
        model: "claude-sonnet-4-5",
        user_agent: Some("claude-cli/1.0"),
        ip: Some(std::net::IpAddr::from([10, 1, 2, 3])),
        estimated_tokens: 0,
        estimated_cost: Decimal::ZERO,
        min_cost: Decimal::ZERO,
        request_id: &rid,
    };
    let cases: [(AdmissionRequest<'_>, Denial); 4] = [
        (
            AdmissionRequest {
                model: "gpt-4o",
                ..base.clone()
            },
            Denial::Model,
        ),
        (
            AdmissionRequest {
                service: Service::Openai,
                ..base.clone()
            },
            Denial::Service,
        ),
        (
            AdmissionRequest {
                user_agent: Some("curl/8"),
                ..base.clone()
            },
            Denial::Client,
        ),
        (
            AdmissionRequest {
                ip: Some(std::net::IpAddr::from([192, 168, 0, 1])),
                ..base.clone()
            },
            Denial::Ip,
        ),
    ];
    for (req, want) in cases {
        let got = f.limiter.admit(&req).await.expect("answers");
        assert_eq!(got.err(), Some(want));
    }
    // None of the refusals used the single request of the window.
    assert!(f.limiter.admit(&base).await.expect("answers").is_ok());
}

/// A dropped permit settles its floor in the background and releases its lease.
pub async fn dropped_permit_releases_its_lease(make: Factory) {
    let policy = KeyPolicy {
        concurrency: Some(1),
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: usd("1"),
        }],
        ..KeyPolicy::default()
    };
    let f = Fixture::new(&make, policy);
    let rid = RequestId::new();
    let req = AdmissionRequest {
        key: &f.key,
        policy: &f.policy,
        service: Service::Anthropic,
        model: "m",
        user_agent: None,
        ip: None,
        estimated_tokens: 100,
        estimated_cost: Decimal::new(9, 1),
        min_cost: Decimal::new(1, 1),
        request_id: &rid,
    };
    let permit = match admit(&f.limiter, &req).await.expect("answers") {
        Ok(p) => p,
        Err(d) => panic!("expected admission, got {d:?}"),
    };
    // Metering saw some output before the client left.
    permit.raise_floor(50, Decimal::new(2, 1));
    drop(permit);
    for _ in 0..200 {
        if f.limiter.in_flight(&f.key).await.ok() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.limiter.in_flight(&f.key).await.ok(), Some(0));
    // 0.2 was charged (the raised floor), not the 0.9 estimate and not nothing.
    assert!(f.try_admit(0, "0.81").await.is_err());
    f.admit_ok(0, "0.8").await;
}

/// A changed policy keeps the counts of the windows and budgets it kept.
pub async fn policy_change_keeps_kept_counts(make: Factory) {
    let first = KeyPolicy {
        rate_windows: vec![RateWindow {
            window_secs: 60,
            max_requests: Some(2),
            max_tokens: None,
            max_cost: None,
        }],
        budgets: vec![Budget {
            period: BudgetPeriod::Total,
            cap: usd("1"),
        }],
        ..KeyPolicy::default()
    };
    let mut f = Fixture::new(&make, first.clone());
    let t = f.admit_ok(0, "0.6").await;
    f.settle(&t, 0, "0.6").await;
    f.admit_ok(0, "0").await;
    // The plan changes: an hourly token window is added, the minute window is kept.
    let mut second = first;
    second.rate_windows.push(RateWindow {
        window_secs: 3600,
        max_requests: None,
        max_tokens: Some(100),
        max_cost: None,
    });
    f.policy = Arc::new(second);
    assert!(matches!(
        f.try_admit(0, "0").await,
        Err(Denial::RateLimited {
            window_secs: 60,
            ..
        })
    ));
    f.advance(120_000);
    assert!(matches!(
        f.try_admit(0, "0.5").await,
        Err(Denial::Budget { .. })
    ));
    f.admit_ok(100, "0.4").await;
    assert!(matches!(
        f.try_admit(1, "0").await,
        Err(Denial::RateLimited {
            window_secs: 3600,
            cap: WindowCap::Tokens,
            ..
        })
    ));
}

/// Stamp out one `#[tokio::test]` per conformance case for a backend.
///
/// `$factory` is an expression evaluating to a future of `Option<Factory>`; `None` skips
/// the case (a backend whose server is not reachable outside CI).
#[macro_export]
macro_rules! limiter_conformance_tests {
    ($factory:expr) => {
        $crate::limiter_conformance_tests!(@cases $factory;
            request_window_and_edges,
            token_and_cost_caps_follow_settlement,
            settle_is_idempotent_and_unknown_permits_are_ignored,
            concurrency_leases,
            leases_expire_and_heartbeats_extend_them,
            a_late_settlement_keeps_the_reservation,
            daily_budget_resets_at_local_midnight,
            weekly_and_monthly_budgets,
            static_rules_refuse_without_counting,
            dropped_permit_releases_its_lease,
            policy_change_keeps_kept_counts
        );
    };
    (@cases $factory:expr; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let factory: Option<$crate::limiter::conformance::Factory> = $factory.await;
                if let Some(factory) = factory {
                    $crate::limiter::conformance::$case(factory).await;
                }
            }
        )*
    };
}
