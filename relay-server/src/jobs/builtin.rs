//! The server's jobs, each a thin adapter over the crate that owns the work.

use std::sync::Arc;

use async_trait::async_trait;
use relay_billing::jobs::{self as billing_jobs, JobReport, SpendCounters, UsageSource};
use relay_billing::Billing;
use relay_core::SharedClock;
use relay_payments::reconcile::{
    reconcile_from, PendingOrderSource, ReconcileDecision, ReconcilePolicy,
};
use relay_payments::{PaymentProvider, WebhookProcessor};

use super::Job;

/// Which billing job a [`BillingJob`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingTask {
    /// [`billing_jobs::renewals`].
    Renewals,
    /// [`billing_jobs::expiry`] (unpaid orders).
    Expiry,
    /// [`billing_jobs::dunning`].
    Dunning,
}

/// One of relay-billing's scheduled jobs.
#[derive(Debug, Clone)]
pub struct BillingJob {
    billing: Arc<Billing>,
    task: BillingTask,
}

impl BillingJob {
    /// Run `task` against `billing`.
    pub fn new(billing: Arc<Billing>, task: BillingTask) -> Self {
        Self { billing, task }
    }
}

#[async_trait]
impl Job for BillingJob {
    fn name(&self) -> &str {
        match self.task {
            BillingTask::Renewals => "renewals",
            BillingTask::Expiry => "expiry",
            BillingTask::Dunning => "dunning",
        }
    }

    async fn run(&self) -> Result<JobReport, String> {
        let r = match self.task {
            BillingTask::Renewals => billing_jobs::renewals(&self.billing).await,
            BillingTask::Expiry => billing_jobs::expiry(&self.billing).await,
            BillingTask::Dunning => billing_jobs::dunning(&self.billing).await,
        };
        r.map_err(|e| e.to_string())
    }
}

/// Usage records to the ledger ([`billing_jobs::usage_to_ledger`]).
#[derive(Debug, Clone)]
pub struct UsageFlushJob {
    billing: Arc<Billing>,
    source: Arc<dyn UsageSource>,
}

impl UsageFlushJob {
    /// Charge what `source` has pending.
    pub fn new(billing: Arc<Billing>, source: Arc<dyn UsageSource>) -> Self {
        Self { billing, source }
    }
}

#[async_trait]
impl Job for UsageFlushJob {
    fn name(&self) -> &str {
        "usage_to_ledger"
    }

    async fn run(&self) -> Result<JobReport, String> {
        billing_jobs::usage_to_ledger(&self.billing, self.source.as_ref())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Ledger drift check ([`billing_jobs::reconcile`]); drift becomes `alert.drift` events.
#[derive(Debug, Clone)]
pub struct LedgerReconcileJob {
    billing: Arc<Billing>,
    counters: Option<Arc<dyn SpendCounters>>,
}

impl LedgerReconcileJob {
    /// Compare the ledger with itself, the usage records and (if given) the counters.
    pub fn new(billing: Arc<Billing>, counters: Option<Arc<dyn SpendCounters>>) -> Self {
        Self { billing, counters }
    }
}

#[async_trait]
impl Job for LedgerReconcileJob {
    fn name(&self) -> &str {
        "ledger_reconcile"
    }

    async fn run(&self) -> Result<JobReport, String> {
        billing_jobs::reconcile(&self.billing, self.counters.as_deref())
            .await
            .map(|(report, _)| report)
            .map_err(|e| e.to_string())
    }
}

/// Pending orders looked up at their provider ([`reconcile_from`]); paid ones are
/// delivered through the webhook processor, so they are checked and deduplicated exactly
/// like a webhook (and a run repeated delivers nothing twice).
pub struct PaymentReconcileJob {
    providers: Vec<Arc<dyn PaymentProvider>>,
    source: Arc<dyn PendingOrderSource>,
    processor: Arc<WebhookProcessor>,
    policy: ReconcilePolicy,
    clock: SharedClock,
}

impl std::fmt::Debug for PaymentReconcileJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.providers.iter().map(|p| p.name()).collect();
        f.debug_struct("PaymentReconcileJob")
            .field("providers", &names)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl PaymentReconcileJob {
    /// Reconcile `source`'s orders for each of `providers`.
    pub fn new(
        providers: Vec<Arc<dyn PaymentProvider>>,
        source: Arc<dyn PendingOrderSource>,
        processor: Arc<WebhookProcessor>,
        clock: SharedClock,
    ) -> Self {
        Self {
            providers,
            source,
            processor,
            policy: ReconcilePolicy::default(),
            clock,
        }
    }

    /// Use `policy` (ages for querying and giving up).
    pub fn with_policy(mut self, policy: ReconcilePolicy) -> Self {
        self.policy = policy;
        self
    }
}

#[async_trait]
impl Job for PaymentReconcileJob {
    fn name(&self) -> &str {
        "payment_reconcile"
    }

    async fn run(&self) -> Result<JobReport, String> {
        let mut report = JobReport::default();
        let now = self.clock.now();
        for provider in &self.providers {
            let decisions =
                reconcile_from(provider.as_ref(), self.source.as_ref(), now, &self.policy)
                    .await
                    .map_err(|e| e.to_string())?;
            for (order, decision) in decisions {
                match decision {
                    ReconcileDecision::Settle(event) => {
                        match self.processor.deliver(&event).await {
                            Ok(_) => report.changed += 1,
                            Err(e) => report.errors.push(format!("{order}: {e}")),
                        }
                    }
                    ReconcileDecision::StillPending | ReconcileDecision::Expire => {
                        // Unpaid orders are expired by billing's expiry job on their own
                        // deadline; nothing to do here.
                        report.unchanged += 1;
                    }
                    ReconcileDecision::Review(status) => {
                        report
                            .errors
                            .push(format!("{order}: needs review ({status:?})"));
                    }
                    ReconcileDecision::QueryFailed(e) => {
                        report.errors.push(format!("{order}: query failed: {e}"));
                    }
                }
            }
        }
        Ok(report)
    }
}

/// The future a [`FnJob`] returns.
pub type JobFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<JobReport, String>> + Send>>;

/// A job from a closure: for work whose owner has no job type of its own (for example
/// purging expired sessions and tokens once relay-auth offers it).
pub struct FnJob<F> {
    name: String,
    run: F,
}

impl<F> FnJob<F>
where
    F: Fn() -> JobFuture + Send + Sync + 'static,
{
    /// A job called `name` that runs `run`.
    pub fn new(name: impl Into<String>, run: F) -> Self {
        Self {
            name: name.into(),
            run,
        }
    }
}

impl<F> std::fmt::Debug for FnJob<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnJob")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<F> Job for FnJob<F>
where
    F: Fn() -> JobFuture + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self) -> Result<JobReport, String> {
        (self.run)().await
    }
}

/// Deletes one-time tokens and sessions that ended (used, expired or revoked) more than
/// `retention` ago ([`relay_auth::AccountService::purge`]): they are useless after that,
/// and a session row says when and from where someone was logged in.
#[derive(Debug, Clone)]
pub struct AuthPurgeJob {
    accounts: Arc<relay_auth::AccountService>,
    retention: chrono::Duration,
}

impl AuthPurgeJob {
    /// Purge `accounts`' store, keeping what ended within `retention`.
    pub fn new(accounts: Arc<relay_auth::AccountService>, retention: chrono::Duration) -> Self {
        Self {
            accounts,
            retention,
        }
    }
}

#[async_trait]
impl Job for AuthPurgeJob {
    fn name(&self) -> &str {
        "auth_purge"
    }

    async fn run(&self) -> Result<JobReport, String> {
        let purged = self
            .accounts
            .purge(self.retention)
            .await
            .map_err(|e| e.to_string())?;
        Ok(JobReport {
            changed: purged.tokens + purged.sessions,
            ..JobReport::default()
        })
    }
}
