//! The job scheduler: on every tick each job runs on exactly one of several instances
//! (sharing SQLite, PostgreSQL or Redis), and a billing job run twice changes nothing
//! the second time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use parking_lot::Mutex;
use relay_core::{ManualClock, SharedClock};
use relay_server::jobs::{
    BillingJob, BillingTask, Job, JobReport, JobScheduler, RedisRunClaims, RunClaims, RunOutcome,
    SqlRunClaims,
};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

/// Counts its runs (shared by every instance) and remembers which ticks ran.
#[derive(Debug)]
struct Counting {
    name: &'static str,
    runs: Arc<AtomicU64>,
}

#[async_trait]
impl Job for Counting {
    fn name(&self) -> &str {
        self.name
    }

    async fn run(&self) -> Result<JobReport, String> {
        tokio::task::yield_now().await;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(JobReport {
            changed: 1,
            ..JobReport::default()
        })
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    hex::encode(b)
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0)
            .single()
            .expect("time"),
    ))
}

/// `instances` schedulers (one per claims handle) with the same two jobs; for `ticks`
/// ticks they all race for every job on many tasks; each job must run once per tick.
async fn once_per_tick(claims: Vec<Arc<dyn RunClaims>>, clock: Arc<ManualClock>, ticks: u64) {
    let minute = Arc::new(AtomicU64::new(0));
    let five = Arc::new(AtomicU64::new(0));
    let shared: SharedClock = clock.clone();
    let schedulers: Vec<Arc<JobScheduler>> = claims
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Arc::new(
                JobScheduler::new(c, shared.clone())
                    .with_instance(format!("instance-{i}"))
                    .with_job(
                        Arc::new(Counting {
                            name: "every_minute",
                            runs: minute.clone(),
                        }),
                        Duration::from_secs(60),
                    )
                    .expect("job")
                    .with_job(
                        Arc::new(Counting {
                            name: "every_five",
                            runs: five.clone(),
                        }),
                        Duration::from_secs(300),
                    )
                    .expect("job"),
            )
        })
        .collect();
    let ran_by: Arc<Mutex<Vec<(String, i64, String)>>> = Arc::default();
    for _ in 0..ticks {
        clock.advance(chrono::Duration::seconds(60));
        let mut tasks = Vec::new();
        // Every instance fires twice per tick (as a late interval would).
        for s in schedulers.iter().chain(schedulers.iter()) {
            let s = Arc::clone(s);
            let ran_by = ran_by.clone();
            tasks.push(tokio::spawn(async move {
                for run in s.run_due().await {
                    match run.outcome {
                        RunOutcome::Ran(_) => {
                            ran_by
                                .lock()
                                .push((run.job, run.tick, s.instance().to_owned()))
                        }
                        RunOutcome::ClaimedElsewhere => {}
                        RunOutcome::Failed(e) => panic!("job failed: {e}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
    }
    assert_eq!(
        minute.load(Ordering::SeqCst),
        ticks,
        "the minute job runs once per tick"
    );
    // 60 s steps from a 5-minute boundary cross `ticks / 5` five-minute boundaries, and
    // the first step starts a tick of its own.
    let five_ticks = ran_by.lock().iter().filter(|r| r.0 == "every_five").count() as u64;
    assert_eq!(five.load(Ordering::SeqCst), five_ticks);
    assert_eq!(five_ticks, 1 + (ticks - 1) / 5);
    let mut keys: Vec<(String, i64)> = ran_by.lock().iter().map(|r| (r.0.clone(), r.1)).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "no (job, tick) ran twice");
}

async fn sqlite_pool(dir: &tempfile::TempDir) -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("jobs.db").display());
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("sqlite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_per_tick_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = sqlite_pool(&dir).await;
    let clock = manual_clock();
    let a = Arc::new(
        SqlRunClaims::open(pool.clone(), clock.clone())
            .await
            .expect("claims"),
    );
    let b = Arc::new(
        SqlRunClaims::open(pool.clone(), clock.clone())
            .await
            .expect("claims"),
    );
    once_per_tick(vec![a.clone(), b], clock, 12).await;
    let runs = a.runs("every_minute").await.expect("runs");
    assert_eq!(runs.len(), 12);
    assert!(runs
        .iter()
        .all(|r| r.2.as_deref() == Some("ok changed=1 unchanged=0 errors=0 skipped=false")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_per_tick_across_instances_sharing_postgres() {
    sqlx::any::install_default_drivers();
    let url = std::env::var("RELAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let admin = match AnyPoolOptions::new().max_connections(1).connect(&url).await {
        Ok(p) => p,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL unreachable in CI: {e}"
            );
            eprintln!("skipping: PostgreSQL unreachable: {e}");
            return;
        }
    };
    let schema = format!("relay_server_jobs_{}", random_suffix());
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .expect("schema");
    let clock = manual_clock();
    // Two instances: each its own pool, as two processes would have.
    let mut claims: Vec<Arc<dyn RunClaims>> = Vec::new();
    let mut pools = Vec::new();
    for _ in 0..2 {
        let s = schema.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let s = s.clone();
                Box::pin(async move {
                    conn.execute(format!("SET search_path TO {s}").as_str())
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .expect("postgres");
        claims.push(Arc::new(
            SqlRunClaims::open(pool.clone(), clock.clone())
                .await
                .expect("claims"),
        ));
        pools.push(pool);
    }
    once_per_tick(claims, clock, 11).await;
    for p in pools {
        p.close().await;
    }
    admin
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_per_tick_across_instances_sharing_redis() {
    let url = std::env::var("RELAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("relay-test:jobs:{}:", random_suffix());
    let first = match RedisRunClaims::connect(&url, &prefix).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "Redis unreachable in CI: {e}"
            );
            eprintln!("skipping: Redis unreachable: {e}");
            return;
        }
    };
    let second = RedisRunClaims::connect(&url, &prefix).await.expect("redis");
    let third = RedisRunClaims::connect(&url, &prefix).await.expect("redis");
    once_per_tick(
        vec![Arc::new(first), Arc::new(second), Arc::new(third)],
        manual_clock(),
        7,
    )
    .await;

    // Fencing: a claim whose key now holds a newer token cannot record its outcome.
    let claims = RedisRunClaims::connect(&url, &prefix).await.expect("redis");
    let claim = claims
        .claim("fenced", 1, "a", Duration::from_millis(30_000))
        .await
        .expect("claim")
        .expect("won");
    assert!(claims
        .claim("fenced", 1, "b", Duration::from_millis(30_000))
        .await
        .expect("claim")
        .is_none());
    claims.finish(&claim, "ok").await.expect("holder records");
    let stale = relay_server::jobs::Claim {
        fence: claim.fence - 1,
        ..claim.clone()
    };
    assert!(matches!(
        claims.finish(&stale, "late").await,
        Err(relay_server::jobs::JobError::Fenced { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_expiry_job_is_idempotent_across_instances() {
    use relay_billing::{store, Billing, BillingConfig, BillingStore, OrderPurpose, OrderStatus};
    use relay_core::{Currency, Money, UserId};

    #[derive(Debug)]
    struct NoKeys;
    #[async_trait]
    impl relay_core::KeyProvisioner for NoKeys {
        async fn apply_entitlement(
            &self,
            _: &UserId,
            _: &relay_core::Entitlement,
        ) -> Result<Option<String>, relay_core::ProvisionError> {
            Ok(None)
        }
        async fn suspend_keys(&self, _: &UserId) -> Result<(), relay_core::ProvisionError> {
            Ok(())
        }
    }

    let clock = manual_clock();
    let shared: SharedClock = clock.clone();
    let billing_store: Arc<dyn BillingStore> =
        Arc::new(store::memory::open().await.expect("store"));
    let config = BillingConfig::default();
    let ttl = config.order_ttl;
    let billing = Arc::new(Billing::new(
        billing_store.clone(),
        shared.clone(),
        Arc::new(NoKeys),
        config,
    ));
    let user = UserId::new();
    let order = billing
        .create_order(
            &user,
            OrderPurpose::TopUp,
            Money::parse("10", Currency::USD).expect("money"),
        )
        .await
        .expect("order");

    let dir = tempfile::tempdir().expect("tempdir");
    let pool = sqlite_pool(&dir).await;
    let claims = Arc::new(
        SqlRunClaims::open(pool, shared.clone())
            .await
            .expect("claims"),
    );
    let make = |name: &str| {
        Arc::new(
            JobScheduler::new(claims.clone(), shared.clone())
                .with_instance(name)
                .with_job(
                    Arc::new(BillingJob::new(billing.clone(), BillingTask::Expiry)),
                    Duration::from_secs(60),
                )
                .expect("job"),
        )
    };
    let (a, b) = (make("a"), make("b"));

    clock.advance(ttl + chrono::Duration::minutes(1));
    let (ra, rb) = tokio::join!(a.run_job("expiry"), b.run_job("expiry"));
    let outcomes = [ra.expect("job").outcome, rb.expect("job").outcome];
    let ran: Vec<&JobReport> = outcomes
        .iter()
        .filter_map(|o| match o {
            RunOutcome::Ran(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(ran.len(), 1, "one instance ran the tick: {outcomes:?}");
    assert_eq!(ran[0].changed, 1);
    let stored = billing_store
        .order(&order.id)
        .await
        .expect("order")
        .expect("exists");
    assert_eq!(stored.status, OrderStatus::Expired);

    // The next tick runs again and finds nothing left to do.
    clock.advance(chrono::Duration::minutes(1));
    let again = b.run_job("expiry").await.expect("job");
    assert_eq!(again.outcome, RunOutcome::Ran(JobReport::default()));
    assert!(a.run_job("missing").await.is_none());
}

#[tokio::test]
async fn spawned_scheduler_runs_and_shuts_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = sqlite_pool(&dir).await;
    let clock: SharedClock = Arc::new(relay_core::SystemClock);
    let claims = Arc::new(
        SqlRunClaims::open(pool, clock.clone())
            .await
            .expect("claims"),
    );
    let runs = Arc::new(AtomicU64::new(0));
    let scheduler = Arc::new(
        JobScheduler::new(claims.clone(), clock)
            .with_job(
                Arc::new(Counting {
                    name: "spawned",
                    runs: runs.clone(),
                }),
                Duration::from_secs(3600),
            )
            .expect("job"),
    );
    assert_eq!(scheduler.job_names(), vec!["spawned".to_owned()]);
    let handle = scheduler.spawn();
    // The first interval tick fires at once; wait for its run to be recorded.
    loop {
        let recorded = claims.runs("spawned").await.expect("runs");
        if recorded.first().is_some_and(|r| r.2.is_some()) {
            break;
        }
        tokio::task::yield_now().await;
    }
    scheduler.shutdown();
    handle.await.expect("stopped cleanly");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_job_settings_are_refused_and_closures_run_as_jobs() {
    use relay_server::jobs::{FnJob, JobError, JobFuture};
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = sqlite_pool(&dir).await;
    let clock = manual_clock();
    let shared: SharedClock = clock.clone();
    let claims = Arc::new(
        SqlRunClaims::open(pool, shared.clone())
            .await
            .expect("claims"),
    );
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let cleanup = move || -> JobFuture {
        let c = c.clone();
        Box::pin(async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(JobReport {
                changed: 3,
                ..JobReport::default()
            })
        })
    };
    let scheduler = JobScheduler::new(claims.clone(), shared.clone())
        .with_job(
            Arc::new(FnJob::new("auth_cleanup", cleanup.clone())),
            Duration::from_secs(60),
        )
        .expect("job");

    let invalid = |r: Result<JobScheduler, JobError>| match r {
        Err(JobError::Invalid(m)) => m,
        Err(e) => panic!("expected a validation error, got {e}"),
        Ok(_) => panic!("expected a validation error"),
    };
    let dup = JobScheduler::new(claims.clone(), shared.clone())
        .with_job(
            Arc::new(FnJob::new("auth_cleanup", cleanup.clone())),
            Duration::from_secs(60),
        )
        .expect("job")
        .with_job(
            Arc::new(FnJob::new("auth_cleanup", cleanup.clone())),
            Duration::from_secs(60),
        );
    assert!(invalid(dup).contains("already scheduled"));
    let empty = JobScheduler::new(claims.clone(), shared.clone()).with_job(
        Arc::new(FnJob::new(" ", cleanup.clone())),
        Duration::from_secs(60),
    );
    assert!(invalid(empty).contains("1 to 100 characters"));
    let fast = JobScheduler::new(claims.clone(), shared.clone()).with_job(
        Arc::new(FnJob::new("fast", cleanup.clone())),
        Duration::from_millis(10),
    );
    assert!(invalid(fast).contains("at least one second"));

    let run = scheduler.run_job("auth_cleanup").await.expect("job");
    assert_eq!(
        run.outcome,
        RunOutcome::Ran(JobReport {
            changed: 3,
            ..JobReport::default()
        })
    );
    // Same tick again: already claimed (by this very instance), not run twice.
    let again = scheduler.run_job("auth_cleanup").await.expect("job");
    assert_eq!(again.outcome, RunOutcome::ClaimedElsewhere);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A failing job is reported and recorded as failed.
    let failing = JobScheduler::new(claims.clone(), shared)
        .with_job(
            Arc::new(FnJob::new("broken", || -> JobFuture {
                Box::pin(async { Err("database is on fire".to_owned()) })
            })),
            Duration::from_secs(60),
        )
        .expect("job");
    let run = failing.run_job("broken").await.expect("job");
    assert_eq!(
        run.outcome,
        RunOutcome::Failed("database is on fire".into())
    );
    let recorded = claims.runs("broken").await.expect("runs");
    assert_eq!(
        recorded[0].2.as_deref(),
        Some("failed: database is on fire")
    );
}
