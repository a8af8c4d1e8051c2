//! Background jobs: plain async functions the server schedules (every minute or so).
//!
//! Each job takes the job's leader lock first ([`BillingStore::try_job_lock`]) and
//! returns [`JobReport::skipped`] when another instance holds it. Beyond the lock, each
//! step is idempotent on its own: subscription changes check the row's version, ledger
//! postings carry idempotency keys, so a step repeated (after a crash, or by a second
//! instance) changes nothing twice.

use std::collections::BTreeMap;

use async_trait::async_trait;
use relay_core::{Currency, Money};
use rust_decimal::Decimal;

use crate::error::Result;
use crate::ledger::Account;
use crate::service::Billing;
use crate::store::BillingStore;
use crate::usage::UsageBatch;

/// What a job run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// Another instance held the lock; nothing was done.
    pub skipped: bool,
    /// Records changed.
    pub changed: u64,
    /// Records looked at and left alone (not due, or changed concurrently).
    pub unchanged: u64,
    /// Errors met, one line each (the job carries on with the next record).
    pub errors: Vec<String>,
}

/// Renew subscriptions whose period ended (or end those canceled at period end).
pub async fn renewals(billing: &Billing) -> Result<JobReport> {
    let store = billing.store();
    let Some(lock) = store.try_job_lock("renewals").await? else {
        return Ok(JobReport {
            skipped: true,
            ..JobReport::default()
        });
    };
    let mut report = JobReport::default();
    let now = billing.now();
    for id in store.due_for_renewal(now).await? {
        match store.renew(&id, billing.config(), now).await {
            Ok(Some(change)) => {
                billing.apply_keys(&change).await;
                report.changed += 1;
            }
            Ok(None) => report.unchanged += 1,
            Err(e) => report.errors.push(format!("{id}: {e}")),
        }
    }
    lock.release().await?;
    Ok(report)
}

/// Retry payment of past-due subscriptions, suspend them when grace ends, expire them
/// (writing the invoice off) when the suspension period ends.
pub async fn dunning(billing: &Billing) -> Result<JobReport> {
    let store = billing.store();
    let Some(lock) = store.try_job_lock("dunning").await? else {
        return Ok(JobReport {
            skipped: true,
            ..JobReport::default()
        });
    };
    let mut report = JobReport::default();
    let now = billing.now();
    for id in store.due_for_dunning(now).await? {
        match store.dun(&id, false, billing.config(), now).await {
            Ok(Some(change)) => {
                billing.apply_keys(&change).await;
                report.changed += 1;
            }
            Ok(None) => report.unchanged += 1,
            Err(e) => report.errors.push(format!("{id}: {e}")),
        }
    }
    lock.release().await?;
    Ok(report)
}

/// Expire orders that were not paid in time.
pub async fn expiry(billing: &Billing) -> Result<JobReport> {
    let store = billing.store();
    let Some(lock) = store.try_job_lock("expiry").await? else {
        return Ok(JobReport {
            skipped: true,
            ..JobReport::default()
        });
    };
    let changed = store.expire_orders(billing.now()).await?;
    lock.release().await?;
    Ok(JobReport {
        changed,
        ..JobReport::default()
    })
}

/// Where usage batches come from (the server implements it over relay-usage's durable
/// usage records).
#[async_trait]
pub trait UsageSource: Send + Sync + std::fmt::Debug {
    /// Batches not yet confirmed as charged.
    async fn pending(&self) -> Result<Vec<UsageBatch>>;
    /// The batch was charged (or had been): do not offer it again.
    async fn confirm(&self, batch_id: &str) -> Result<()>;
}

/// Longest a [`usage_to_ledger`] run keeps taking pages of pending batches.
const USAGE_RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Charge pending usage batches to the ledger, page after page until none is left (or
/// for at most 30 s: the next run goes on). A batch charged before (by a crashed run or
/// another instance) is a replay and charges nothing again. One page per run fell behind
/// for good as soon as traffic brought more batches per period than a page holds.
pub async fn usage_to_ledger(billing: &Billing, source: &dyn UsageSource) -> Result<JobReport> {
    let store = billing.store();
    let Some(lock) = store.try_job_lock("usage_to_ledger").await? else {
        return Ok(JobReport {
            skipped: true,
            ..JobReport::default()
        });
    };
    let started = std::time::Instant::now();
    let mut report = JobReport::default();
    // A batch offered again in the same run (its charge failed, or the source does not
    // drop confirmed ones) ends the run rather than looping on it.
    let mut seen = std::collections::HashSet::new();
    while started.elapsed() < USAGE_RUN_BUDGET {
        let page = source.pending().await?;
        let fresh: Vec<UsageBatch> = page
            .into_iter()
            .filter(|b| seen.insert(b.batch_id.clone()))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for batch in fresh {
            match billing.charge_usage(&batch).await {
                Ok(charge) => {
                    if charge.replayed {
                        report.unchanged += 1;
                    } else {
                        report.changed += 1;
                    }
                    source.confirm(&batch.batch_id).await?;
                }
                Err(e) => report.errors.push(format!("{}: {e}", batch.batch_id)),
            }
        }
    }
    lock.release().await?;
    Ok(report)
}

/// Real-time spend counters to compare with the ledger (relay-usage's Redis or memory
/// counters, adapted by the server).
#[async_trait]
pub trait SpendCounters: Send + Sync + std::fmt::Debug {
    /// Total usage cost the counters hold per user and currency, since they began.
    async fn spend(&self) -> Result<Vec<(relay_core::UserId, Money)>>;
}

/// One difference reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// What was compared (`wallet:usr_…`, `ledger`, `usage:usr_…`, `counters:usr_…`).
    pub subject: String,
    /// The truth (derived from ledger entries or usage batches).
    pub expected: Money,
    /// What the cache or counter says.
    pub actual: Money,
}

/// Compare every wallet's cached balance with the balance derived from its entries, the
/// whole ledger's sum with zero, the usage records' charges with the ledger's usage
/// debits, and (when given) real-time spend counters with the usage records' list cost;
/// record each difference as an `alert.drift` event.
pub async fn reconcile(
    billing: &Billing,
    counters: Option<&dyn SpendCounters>,
) -> Result<(JobReport, Vec<Drift>)> {
    let store = billing.store();
    let Some(lock) = store.try_job_lock("reconcile").await? else {
        return Ok((
            JobReport {
                skipped: true,
                ..JobReport::default()
            },
            Vec::new(),
        ));
    };
    let drifts = find_drift(store.as_ref(), counters).await?;
    let now = billing.now();
    for d in &drifts {
        let detail = serde_json::json!({ "expected": d.expected, "actual": d.actual });
        store
            .record_event("alert.drift", &d.subject, None, detail, now)
            .await?;
    }
    lock.release().await?;
    let report = JobReport {
        changed: drifts.len() as u64,
        ..JobReport::default()
    };
    Ok((report, drifts))
}

/// The comparisons of [`reconcile`], without recording anything.
pub async fn find_drift(
    store: &dyn BillingStore,
    counters: Option<&dyn SpendCounters>,
) -> Result<Vec<Drift>> {
    let mut drifts = Vec::new();
    for w in store.wallets().await? {
        let account = Account::Wallet(w.user_id.clone());
        let derived = store
            .derived_balance(&account, w.balance.currency())
            .await?;
        if derived != w.balance {
            drifts.push(Drift {
                subject: account.key(),
                expected: derived,
                actual: w.balance,
            });
        }
    }
    let mut totals: BTreeMap<Currency, Decimal> = BTreeMap::new();
    let txs = store.transactions(None).await?;
    for t in &txs {
        for (c, sum) in t.sums() {
            *totals.entry(c).or_default() += sum;
        }
    }
    for (c, sum) in totals {
        if !sum.is_zero() {
            drifts.push(Drift {
                subject: "ledger".into(),
                expected: Money::zero(c),
                actual: Money::new(sum, c),
            });
        }
    }
    // Usage records against the ledger: what the batches say was charged must be what
    // the usage-charge transactions debited from each wallet.
    let mut debited: BTreeMap<(String, Currency), Decimal> = BTreeMap::new();
    for t in txs
        .iter()
        .filter(|t| t.kind == crate::ledger::TxKind::UsageCharge)
    {
        if let Some(u) = &t.user_id {
            let wallet = Account::Wallet(u.clone());
            for e in t.entries.iter().filter(|e| e.account == wallet) {
                *debited
                    .entry((u.to_string(), e.amount.currency()))
                    .or_default() += e.amount.amount();
            }
        }
    }
    for total in store.usage_totals().await? {
        let c = total.charged.currency();
        let in_ledger = debited
            .get(&(total.user_id.to_string(), c))
            .copied()
            .unwrap_or_default();
        if in_ledger != total.charged.amount() {
            drifts.push(Drift {
                subject: format!("usage:{}", total.user_id),
                expected: total.charged,
                actual: Money::new(in_ledger, c),
            });
        }
    }
    if let Some(counters) = counters {
        for (user, spend) in counters.spend().await? {
            let usage = store.usage_cost(&user, spend.currency()).await?;
            if usage != spend {
                drifts.push(Drift {
                    subject: format!("counters:{user}"),
                    expected: usage,
                    actual: spend,
                });
            }
        }
    }
    Ok(drifts)
}
