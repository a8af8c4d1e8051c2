//! Invoices, credit notes, their numbers and their ledger postings.

use chrono::{DateTime, Utc};
use relay_core::{Currency, InvoiceId, Money, SubscriptionId, UserId};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::ledger::post_in;
use super::{audit_in, from_ts, i, money, opt_s, opt_ts, parse, s, ts, Dialect, SqlBillingStore};
use crate::config::BillingConfig;
use crate::error::{BillingError, Result};
use crate::invoice::{
    compute_totals, DocumentKind, Invoice, InvoiceStatus, LineItem, LineKind, TaxRule,
};
use crate::ledger::{Account, Entry, NewTransaction, Posted, Transaction, TxKind};

const COLUMNS: &str =
    "id, kind, operator, number, user_id, subscription_id, corrects, currency, status, \
                       tax_rule, lines, subtotal, tax, total, created_at, finalized_at, closed_at";

fn invoice_from_row(r: &AnyRow) -> Result<Invoice> {
    let currency = s(r, "currency")?;
    Ok(Invoice {
        id: parse(&s(r, "id")?)?,
        kind: match s(r, "kind")?.as_str() {
            "invoice" => DocumentKind::Invoice,
            "credit_note" => DocumentKind::CreditNote,
            other => return Err(BillingError::Corrupt(format!("document kind `{other}`"))),
        },
        operator: s(r, "operator")?,
        number: opt_s(r, "number")?,
        user_id: parse(&s(r, "user_id")?)?,
        subscription_id: opt_s(r, "subscription_id")?
            .map(|x| parse(&x))
            .transpose()?,
        corrects: opt_s(r, "corrects")?.map(|x| parse(&x)).transpose()?,
        currency: parse(&currency)?,
        status: s(r, "status")?.parse()?,
        tax_rule: serde_json::from_str(&s(r, "tax_rule")?)?,
        lines: serde_json::from_str(&s(r, "lines")?)?,
        subtotal: money(&s(r, "subtotal")?, &currency)?,
        tax: money(&s(r, "tax")?, &currency)?,
        total: money(&s(r, "total")?, &currency)?,
        created_at: from_ts(i(r, "created_at")?)?,
        finalized_at: opt_ts(r, "finalized_at")?,
        closed_at: opt_ts(r, "closed_at")?,
    })
}

pub(crate) async fn load_invoice(c: &mut AnyConnection, id: &InvoiceId) -> Result<Option<Invoice>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM billing_invoices WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(invoice_from_row).transpose()
}

pub(crate) async fn must_invoice(c: &mut AnyConnection, id: &InvoiceId) -> Result<Invoice> {
    load_invoice(c, id)
        .await?
        .ok_or_else(|| BillingError::NotFound {
            kind: "invoice",
            id: id.to_string(),
        })
}

fn check_lines(currency: Currency, lines: &[LineItem]) -> Result<()> {
    for l in lines {
        if l.description.trim().is_empty() || l.description.chars().count() > 200 {
            return Err(BillingError::InvalidInput(
                "line description must be 1 to 200 characters".into(),
            ));
        }
        if l.amount.currency() != currency {
            return Err(BillingError::InvalidInput(format!(
                "line `{}` is in {}, the invoice in {currency}",
                l.description,
                l.amount.currency()
            )));
        }
    }
    Ok(())
}

/// Insert a draft.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_draft_in(
    c: &mut AnyConnection,
    kind: DocumentKind,
    user: &UserId,
    subscription: Option<&SubscriptionId>,
    corrects: Option<&InvoiceId>,
    currency: Currency,
    lines: &[LineItem],
    rule: TaxRule,
    operator: &str,
    now: DateTime<Utc>,
) -> Result<Invoice> {
    check_lines(currency, lines)?;
    rule.validate()?;
    let id = InvoiceId::new();
    let zero = Money::zero(currency).amount().to_string();
    sqlx::query(
        "INSERT INTO billing_invoices (id, kind, operator, number, user_id, subscription_id, corrects, currency, status, \
         tax_rule, lines, subtotal, tax, total, created_at) \
         VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, 'draft', $8, $9, $10, $10, $10, $11)",
    )
    .bind(id.as_str())
    .bind(kind.as_str())
    .bind(operator)
    .bind(user.as_str())
    .bind(subscription.map(|x| x.as_str().to_owned()))
    .bind(corrects.map(|x| x.as_str().to_owned()))
    .bind(currency.code())
    .bind(serde_json::to_string(&rule)?)
    .bind(serde_json::to_string(lines)?)
    .bind(zero)
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    must_invoice(c, &id).await
}

/// Number, round and tax a draft; it becomes open. The number comes from the operator's
/// sequence row, updated in this transaction: a rollback returns the number, so the
/// sequence has no gaps.
pub(crate) async fn finalize_in(
    c: &mut AnyConnection,
    id: &InvoiceId,
    now: DateTime<Utc>,
) -> Result<Invoice> {
    let inv = must_invoice(c, id).await?;
    if inv.status != InvoiceStatus::Draft {
        return Err(BillingError::IllegalTransition {
            kind: "invoice",
            state: inv.status.to_string(),
            action: "finalize",
        });
    }
    if inv.lines.is_empty() {
        return Err(BillingError::InvalidInput(
            "an invoice needs at least one line".into(),
        ));
    }
    let totals = compute_totals(inv.currency, &inv.lines, inv.tax_rule)?;
    let series = format!("{}:{}", inv.operator, inv.kind.prefix());
    sqlx::query(
        "INSERT INTO billing_invoice_sequences (series, last) VALUES ($1, 0) ON CONFLICT (series) DO NOTHING",
    )
    .bind(&series)
    .execute(&mut *c)
    .await?;
    let n: i64 = sqlx::query_scalar(
        "UPDATE billing_invoice_sequences SET last = last + 1 WHERE series = $1 RETURNING last",
    )
    .bind(&series)
    .fetch_one(&mut *c)
    .await?;
    let number = format!("{}-{n:06}", inv.kind.prefix());
    let done = sqlx::query(
        "UPDATE billing_invoices SET number = $2, status = 'open', lines = $3, subtotal = $4, tax = $5, total = $6, \
         finalized_at = $7 WHERE id = $1 AND status = 'draft'",
    )
    .bind(id.as_str())
    .bind(&number)
    .bind(serde_json::to_string(&totals.lines)?)
    .bind(totals.subtotal.amount().to_string())
    .bind(totals.tax.amount().to_string())
    .bind(totals.total.amount().to_string())
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        // Finalised concurrently: refuse, and the rollback returns the number.
        return Err(BillingError::Conflict(format!(
            "invoice {id} finalised concurrently"
        )));
    }
    must_invoice(c, id).await
}

/// A finalised (open) invoice with these lines.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn issue_in(
    c: &mut AnyConnection,
    user: &UserId,
    subscription: Option<&SubscriptionId>,
    currency: Currency,
    lines: &[LineItem],
    config: &BillingConfig,
    now: DateTime<Utc>,
) -> Result<Invoice> {
    let draft = insert_draft_in(
        c,
        DocumentKind::Invoice,
        user,
        subscription,
        None,
        currency,
        lines,
        config.tax,
        &config.operator,
        now,
    )
    .await?;
    finalize_in(c, &draft.id, now).await
}

/// The entries that book an invoice against `counter` (the wallet paying it, or the
/// receivable owing it): counter debited by the total, revenue credited with the net
/// amount before proration credits, refunds debited with those credits, tax payable
/// credited with the tax. Zero amounts are left out.
fn invoice_entries(inv: &Invoice, counter: Account) -> Result<Vec<Entry>> {
    let credits = Money::sum(
        inv.currency,
        inv.lines
            .iter()
            .filter(|l| l.kind == LineKind::Proration)
            .map(|l| &l.amount),
    )?
    .negated();
    let revenue = inv.subtotal.checked_add(&credits)?;
    let entries = vec![
        Entry::debit(counter, inv.total),
        Entry::credit(Account::Revenue, revenue),
        Entry::debit(Account::Refunds, credits),
        Entry::credit(Account::TaxPayable, inv.tax),
    ];
    Ok(entries
        .into_iter()
        .filter(|e| !e.amount.is_zero())
        .collect())
}

fn reversed(entries: Vec<Entry>) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|e| Entry {
            account: e.account,
            amount: e.amount.negated(),
        })
        .collect()
}

async fn set_status(
    c: &mut AnyConnection,
    id: &InvoiceId,
    status: InvoiceStatus,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("UPDATE billing_invoices SET status = $2, closed_at = $3 WHERE id = $1")
        .bind(id.as_str())
        .bind(status.as_str())
        .bind(ts(now))
        .execute(&mut *c)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn post_entries(
    c: &mut AnyConnection,
    d: Dialect,
    key: String,
    kind: TxKind,
    inv: &Invoice,
    entries: Vec<Entry>,
    guarded: bool,
    now: DateTime<Utc>,
) -> Result<Option<Transaction>> {
    if entries.len() < 2 {
        return Ok(None);
    }
    let tx = NewTransaction {
        idempotency_key: key,
        kind,
        user_id: Some(inv.user_id.clone()),
        memo: format!(
            "{} {}",
            inv.kind.as_str(),
            inv.number.as_deref().unwrap_or(inv.id.as_str())
        ),
        entries,
        guarded,
    };
    Ok(Some(post_in(c, d, &tx, now).await.map(|p| match p {
        Posted::New(t) | Posted::Replayed(t) => t,
    })?))
}

/// Mark an invoice paid without posting (what it bills was paid already).
pub(crate) async fn mark_paid_in(
    c: &mut AnyConnection,
    id: &InvoiceId,
    now: DateTime<Utc>,
) -> Result<()> {
    set_status(c, id, InvoiceStatus::Paid, now).await
}

/// Pay an open invoice that has no receivable straight from the wallet (guarded) and
/// mark it paid. On insufficient funds nothing is written.
pub(crate) async fn charge_from_wallet_in(
    c: &mut AnyConnection,
    d: Dialect,
    inv: &Invoice,
    now: DateTime<Utc>,
) -> Result<Option<Transaction>> {
    let entries = invoice_entries(inv, Account::Wallet(inv.user_id.clone()))?;
    let tx = post_entries(
        c,
        d,
        format!("invoice:{}:charge", inv.id),
        TxKind::PlanCharge,
        inv,
        entries,
        true,
        now,
    )
    .await?;
    set_status(c, &inv.id, InvoiceStatus::Paid, now).await?;
    Ok(tx)
}

/// Book an open invoice as owed (receivable).
pub(crate) async fn book_receivable_in(
    c: &mut AnyConnection,
    d: Dialect,
    inv: &Invoice,
    now: DateTime<Utc>,
) -> Result<Option<Transaction>> {
    let entries = invoice_entries(inv, Account::Receivable(inv.user_id.clone()))?;
    post_entries(
        c,
        d,
        format!("invoice:{}:receivable", inv.id),
        TxKind::InvoiceOnCredit,
        inv,
        entries,
        false,
        now,
    )
    .await
}

/// Pay an open (receivable) invoice from the wallet, guarded.
pub(crate) async fn pay_open_in(
    c: &mut AnyConnection,
    d: Dialect,
    inv: &Invoice,
    now: DateTime<Utc>,
) -> Result<Option<Transaction>> {
    if inv.status != InvoiceStatus::Open {
        return Err(BillingError::IllegalTransition {
            kind: "invoice",
            state: inv.status.to_string(),
            action: "pay",
        });
    }
    let entries = if inv.total.is_zero() {
        Vec::new()
    } else {
        vec![
            Entry::debit(Account::Wallet(inv.user_id.clone()), inv.total),
            Entry::credit(Account::Receivable(inv.user_id.clone()), inv.total),
        ]
    };
    let tx = post_entries(
        c,
        d,
        format!("invoice:{}:paid", inv.id),
        TxKind::ReceivablePayment,
        inv,
        entries,
        true,
        now,
    )
    .await?;
    set_status(c, &inv.id, InvoiceStatus::Paid, now).await?;
    Ok(tx)
}

/// Void or write off an open (receivable) invoice: its booking is reversed.
pub(crate) async fn close_open_in(
    c: &mut AnyConnection,
    d: Dialect,
    inv: &Invoice,
    uncollectible: bool,
    now: DateTime<Utc>,
) -> Result<Option<Transaction>> {
    let entries = reversed(invoice_entries(
        inv,
        Account::Receivable(inv.user_id.clone()),
    )?);
    let tx = post_entries(
        c,
        d,
        format!("invoice:{}:close", inv.id),
        TxKind::WriteOff,
        inv,
        entries,
        false,
        now,
    )
    .await?;
    let status = if uncollectible {
        InvoiceStatus::Uncollectible
    } else {
        InvoiceStatus::Void
    };
    set_status(c, &inv.id, status, now).await?;
    Ok(tx)
}

impl SqlBillingStore {
    pub(super) async fn create_draft_impl(
        &self,
        user: &UserId,
        currency: Currency,
        lines: Vec<LineItem>,
        config: &BillingConfig,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        let mut c = self.pool.acquire().await?;
        insert_draft_in(
            &mut c,
            DocumentKind::Invoice,
            user,
            None,
            None,
            currency,
            &lines,
            config.tax,
            &config.operator,
            now,
        )
        .await
    }

    pub(super) async fn add_line_impl(&self, id: &InvoiceId, line: LineItem) -> Result<Invoice> {
        let mut db = self.pool.begin().await?;
        super::lock_row(&mut db, self.dialect, "billing_invoices", id.as_str()).await?;
        let mut inv = must_invoice(&mut db, id).await?;
        if inv.status != InvoiceStatus::Draft {
            return Err(BillingError::IllegalTransition {
                kind: "invoice",
                state: inv.status.to_string(),
                action: "add a line to",
            });
        }
        check_lines(inv.currency, std::slice::from_ref(&line))?;
        inv.lines.push(line);
        sqlx::query("UPDATE billing_invoices SET lines = $2 WHERE id = $1 AND status = 'draft'")
            .bind(id.as_str())
            .bind(serde_json::to_string(&inv.lines)?)
            .execute(&mut *db)
            .await?;
        let inv = must_invoice(&mut db, id).await?;
        db.commit().await?;
        Ok(inv)
    }

    pub(super) async fn finalize_impl(
        &self,
        id: &InvoiceId,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        let mut db = self.pool.begin().await?;
        super::lock_row(&mut db, self.dialect, "billing_invoices", id.as_str()).await?;
        let inv = finalize_in(&mut db, id, now).await?;
        if inv.kind == DocumentKind::CreditNote {
            return Err(BillingError::InvalidInput(
                "credit notes are issued with credit_note".into(),
            ));
        }
        book_receivable_in(&mut db, self.dialect, &inv, now).await?;
        audit_in(
            &mut db,
            "system",
            "invoice.finalize",
            id.as_str(),
            &serde_json::json!({ "number": inv.number }),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(inv)
    }

    pub(super) async fn pay_invoice_impl(
        &self,
        id: &InvoiceId,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        let mut db = self.pool.begin().await?;
        super::lock_row(&mut db, self.dialect, "billing_invoices", id.as_str()).await?;
        let inv = must_invoice(&mut db, id).await?;
        pay_open_in(&mut db, self.dialect, &inv, now).await?;
        let inv = must_invoice(&mut db, id).await?;
        db.commit().await?;
        Ok(inv)
    }

    pub(super) async fn close_invoice_impl(
        &self,
        id: &InvoiceId,
        uncollectible: bool,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        let mut db = self.pool.begin().await?;
        super::lock_row(&mut db, self.dialect, "billing_invoices", id.as_str()).await?;
        let inv = must_invoice(&mut db, id).await?;
        let action = if uncollectible {
            "mark uncollectible"
        } else {
            "void"
        };
        match (inv.status, uncollectible) {
            (InvoiceStatus::Draft, false) => {
                set_status(&mut db, id, InvoiceStatus::Void, now).await?
            }
            (InvoiceStatus::Open, _) => {
                close_open_in(&mut db, self.dialect, &inv, uncollectible, now).await?;
            }
            _ => {
                return Err(BillingError::IllegalTransition {
                    kind: "invoice",
                    state: inv.status.to_string(),
                    action,
                })
            }
        }
        audit_in(
            &mut db,
            "system",
            &format!(
                "invoice.{}",
                if uncollectible {
                    "uncollectible"
                } else {
                    "void"
                }
            ),
            id.as_str(),
            &serde_json::json!({}),
            now,
        )
        .await?;
        let inv = must_invoice(&mut db, id).await?;
        db.commit().await?;
        Ok(inv)
    }

    pub(super) async fn credit_note_impl(
        &self,
        id: &InvoiceId,
        lines: &[LineItem],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Invoice> {
        if reason.trim().is_empty() || reason.len() > 500 {
            return Err(BillingError::InvalidInput(
                "a credit note needs a reason (1 to 500 characters)".into(),
            ));
        }
        if lines.is_empty()
            || lines
                .iter()
                .any(|l| l.amount.is_negative() || l.amount.is_zero())
        {
            return Err(BillingError::InvalidInput(
                "credit note lines are the positive amounts credited".into(),
            ));
        }
        let mut db = self.pool.begin().await?;
        super::lock_row(&mut db, self.dialect, "billing_invoices", id.as_str()).await?;
        let original = must_invoice(&mut db, id).await?;
        if original.kind != DocumentKind::Invoice || original.status != InvoiceStatus::Paid {
            return Err(BillingError::IllegalTransition {
                kind: "invoice",
                state: original.status.to_string(),
                action: "credit",
            });
        }
        let draft = insert_draft_in(
            &mut db,
            DocumentKind::CreditNote,
            &original.user_id,
            original.subscription_id.as_ref(),
            Some(id),
            original.currency,
            lines,
            original.tax_rule,
            &original.operator,
            now,
        )
        .await?;
        let note = finalize_in(&mut db, &draft.id, now).await?;
        let previous = sqlx::query(
            "SELECT total, currency FROM billing_invoices WHERE corrects = $1 AND kind = 'credit_note' AND id <> $2 AND status = 'paid'",
        )
        .bind(id.as_str())
        .bind(note.id.as_str())
        .fetch_all(&mut *db)
        .await?;
        let mut credited = note.total;
        for r in &previous {
            credited = credited.checked_add(&money(&s(r, "total")?, &s(r, "currency")?)?)?;
        }
        if credited.checked_cmp(&original.total)? == std::cmp::Ordering::Greater {
            return Err(BillingError::InvalidInput(format!(
                "credit notes would total {credited}, more than the invoice's {}",
                original.total
            )));
        }
        let entries: Vec<Entry> = vec![
            Entry::credit(Account::Wallet(note.user_id.clone()), note.total),
            Entry::debit(Account::Refunds, note.subtotal),
            Entry::debit(Account::TaxPayable, note.tax),
        ]
        .into_iter()
        .filter(|e| !e.amount.is_zero())
        .collect();
        post_entries(
            &mut db,
            self.dialect,
            format!("invoice:{}:credit", note.id),
            TxKind::ChargeRefund,
            &note,
            entries,
            false,
            now,
        )
        .await?;
        set_status(&mut db, &note.id, InvoiceStatus::Paid, now).await?;
        audit_in(
            &mut db,
            "system",
            "invoice.credit_note",
            id.as_str(),
            &serde_json::json!({ "credit_note": note.id, "reason": reason }),
            now,
        )
        .await?;
        let note = must_invoice(&mut db, &note.id).await?;
        db.commit().await?;
        Ok(note)
    }

    pub(super) async fn invoices_impl(&self, user: &UserId) -> Result<Vec<Invoice>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM billing_invoices WHERE user_id = $1 ORDER BY created_at, number"
        ))
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invoice_from_row).collect()
    }
}
