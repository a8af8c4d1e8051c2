//! Background jobs: an in-process scheduler with one runner per tick across instances.
//!
//! Each job has a period; time is cut into ticks (`now / period`, from the server's
//! clock, so every instance agrees which tick it is). On each tick every instance tries
//! to claim `(job, tick)` through [`RunClaims`]; exactly one wins and runs the job, the
//! others skip it. The jobs themselves are idempotent (billing's changes check versions
//! and carry idempotency keys), so a run repeated after a crash changes nothing twice.
//!
//! Wiring, in the server:
//!
//! ```no_run
//! # async fn demo(pool: sqlx::AnyPool, billing: std::sync::Arc<relay_billing::Billing>) -> Result<(), relay_server::jobs::JobError> {
//! use std::{sync::Arc, time::Duration};
//! use relay_server::jobs::{BillingJob, BillingTask, JobScheduler, SqlRunClaims};
//!
//! let clock: relay_core::SharedClock = Arc::new(relay_core::SystemClock);
//! let claims = Arc::new(SqlRunClaims::open(pool, clock.clone()).await?);
//! let scheduler = Arc::new(
//!     JobScheduler::new(claims, clock)
//!         .with_job(Arc::new(BillingJob::new(billing.clone(), BillingTask::Renewals)), Duration::from_secs(60))?
//!         .with_job(Arc::new(BillingJob::new(billing.clone(), BillingTask::Expiry)), Duration::from_secs(60))?
//!         .with_job(Arc::new(BillingJob::new(billing, BillingTask::Dunning)), Duration::from_secs(300))?,
//! );
//! let handle = scheduler.spawn();
//! // ... at shutdown:
//! scheduler.shutdown();
//! let _ = handle.await;
//! # Ok(()) }
//! ```

mod builtin;
pub mod claims;
mod wiring;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use relay_core::SharedClock;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub use builtin::AuthPurgeJob;
pub use builtin::{
    BillingJob, BillingTask, FnJob, JobFuture, LedgerReconcileJob, PaymentReconcileJob,
    UsageFlushJob,
};
pub use claims::{migrate, Claim, RedisRunClaims, RunClaims, SqlRunClaims};
pub use relay_billing::jobs::JobReport;
pub use wiring::{CheckoutLog, UsageRollupJob};

/// Why a job could not be scheduled or claimed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A bad argument.
    #[error("invalid job setting: {0}")]
    Invalid(String),
    /// Our claim was taken over by a later one (its fencing token is newer).
    #[error("claim of job {job} (fence {fence}) was superseded")]
    Fenced {
        /// The job.
        job: String,
        /// Our token.
        fence: i64,
    },
    /// The database failed.
    #[error("job claims store error: {0}")]
    Backend(#[from] sqlx::Error),
    /// Redis failed.
    #[error("job claims redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A unit of scheduled work. Runs must be idempotent.
#[async_trait]
pub trait Job: Send + Sync + std::fmt::Debug + 'static {
    /// A stable name (claims are keyed by it).
    fn name(&self) -> &str;
    /// Do the work once.
    async fn run(&self) -> Result<JobReport, String>;
}

/// What happened to one job on one tick, on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// This instance ran it.
    Ran(JobReport),
    /// Another instance has this tick.
    ClaimedElsewhere,
    /// This instance ran it and it failed.
    Failed(String),
}

/// One job's tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    /// The job.
    pub job: String,
    /// The tick.
    pub tick: i64,
    /// What happened.
    pub outcome: RunOutcome,
}

#[derive(Debug, Clone)]
struct Scheduled {
    job: Arc<dyn Job>,
    period: Duration,
}

/// Runs jobs on their periods; one runner per tick across every instance that shares
/// the [`RunClaims`].
#[derive(Debug)]
pub struct JobScheduler {
    jobs: Vec<Scheduled>,
    claims: Arc<dyn RunClaims>,
    clock: SharedClock,
    instance: String,
    stop: watch::Sender<bool>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl JobScheduler {
    /// A scheduler with no jobs yet; `claims` decides who runs each tick.
    pub fn new(claims: Arc<dyn RunClaims>, clock: SharedClock) -> Self {
        let mut id = [0u8; 8];
        // A random instance name for the run history; falls back to the pid.
        let instance =
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_ok() {
                format!("inst_{}", hex::encode(id))
            } else {
                format!("pid_{}", std::process::id())
            };
        Self {
            jobs: Vec::new(),
            claims,
            clock,
            instance,
            stop: watch::channel(false).0,
        }
    }

    /// Name this instance in the run history.
    pub fn with_instance(mut self, name: impl Into<String>) -> Self {
        self.instance = name.into();
        self
    }

    /// Run `job` every `period`. Refused: an empty or over-long name (1 to 100
    /// characters), a name already scheduled (claims are keyed by name), a period under
    /// one second.
    pub fn with_job(mut self, job: Arc<dyn Job>, period: Duration) -> Result<Self, JobError> {
        let name = job.name();
        if name.trim().is_empty() || name.len() > 100 {
            return Err(JobError::Invalid(format!(
                "job name `{name}` must be 1 to 100 characters"
            )));
        }
        if self.jobs.iter().any(|s| s.job.name() == name) {
            return Err(JobError::Invalid(format!(
                "job `{name}` is already scheduled"
            )));
        }
        if period < Duration::from_secs(1) {
            return Err(JobError::Invalid(format!(
                "period of job `{name}` must be at least one second, got {period:?}"
            )));
        }
        self.jobs.push(Scheduled { job, period });
        Ok(self)
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The names of the scheduled jobs.
    pub fn job_names(&self) -> Vec<String> {
        self.jobs.iter().map(|s| s.job.name().to_owned()).collect()
    }

    /// The current tick of a job with `period`.
    pub fn tick_of(&self, period: Duration) -> i64 {
        self.clock
            .now()
            .timestamp_millis()
            .div_euclid(millis(period))
    }

    async fn run_one(&self, s: &Scheduled) -> JobRun {
        let tick = self.tick_of(s.period);
        let name = s.job.name().to_owned();
        // Remember the claim for two periods: past the tick, so a late instance
        // cannot claim it again.
        let ttl = s.period.saturating_mul(2);
        let outcome = match self.claims.claim(&name, tick, &self.instance, ttl).await {
            Ok(None) => RunOutcome::ClaimedElsewhere,
            Err(e) => RunOutcome::Failed(format!("claim: {e}")),
            Ok(Some(claim)) => {
                let outcome = match s.job.run().await {
                    Ok(report) => RunOutcome::Ran(report),
                    Err(e) => RunOutcome::Failed(e),
                };
                let line = match &outcome {
                    RunOutcome::Ran(r) => format!(
                        "ok changed={} unchanged={} errors={} skipped={}",
                        r.changed,
                        r.unchanged,
                        r.errors.len(),
                        r.skipped
                    ),
                    RunOutcome::Failed(e) => format!("failed: {e}"),
                    RunOutcome::ClaimedElsewhere => String::new(),
                };
                if let Err(e) = self.claims.finish(&claim, &line).await {
                    tracing::warn!(job = %name, tick, error = %e, "could not record the job outcome");
                }
                outcome
            }
        };
        match &outcome {
            RunOutcome::Ran(r) => {
                tracing::info!(job = %name, tick, changed = r.changed, errors = r.errors.len(), "job ran")
            }
            RunOutcome::Failed(e) => tracing::error!(job = %name, tick, error = %e, "job failed"),
            RunOutcome::ClaimedElsewhere => {
                tracing::debug!(job = %name, tick, "job tick claimed elsewhere")
            }
        }
        JobRun {
            job: name,
            tick,
            outcome,
        }
    }

    /// Try every job once for its current tick (what each interval does).
    pub async fn run_due(&self) -> Vec<JobRun> {
        let mut out = Vec::with_capacity(self.jobs.len());
        for s in &self.jobs {
            out.push(self.run_one(s).await);
        }
        out
    }

    /// Try the job named `name` once for its current tick; `None` if no such job.
    pub async fn run_job(&self, name: &str) -> Option<JobRun> {
        let s = self.jobs.iter().find(|s| s.job.name() == name)?;
        Some(self.run_one(s).await)
    }

    /// Start one interval per job; the handle ends after [`shutdown`](Self::shutdown).
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for index in 0..this.jobs.len() {
                let this = Arc::clone(&this);
                let mut stop = this.stop.subscribe();
                set.spawn(async move {
                    let Some(s) = this.jobs.get(index).cloned() else {
                        return;
                    };
                    let mut interval = tokio::time::interval(s.period);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    loop {
                        let stopped = tokio::select! {
                            _ = interval.tick() => false,
                            r = stop.wait_for(|s| *s) => { drop(r); true }
                        };
                        if stopped {
                            break;
                        }
                        this.run_one(&s).await;
                    }
                });
            }
            while set.join_next().await.is_some() {}
        })
    }

    /// Stop the spawned intervals (runs in progress finish first).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}
