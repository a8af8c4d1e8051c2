//! Posting and reading ledger transactions; wallets and their guarded cached balance.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use relay_core::{Currency, Money, UserId};
use rust_decimal::Decimal;
use sqlx::AnyConnection;

use super::{dec, from_ts, i, money, new_id, opt_s, parse, s, ts, Dialect, SqlBillingStore};
use crate::error::{BillingError, Result};
use crate::ledger::{Account, Entry, NewTransaction, Posted, Transaction, TxKind, Wallet};

/// Post `tx` inside the caller's database transaction. On `InsufficientFunds` nothing
/// was written, so a composite operation may carry on (a failed renewal goes past due).
pub(crate) async fn post_in(
    c: &mut AnyConnection,
    d: Dialect,
    tx: &NewTransaction,
    now: DateTime<Utc>,
) -> Result<Posted> {
    let currency = tx.validate()?;
    let fingerprint = tx.fingerprint();
    if let Some((existing, fp)) = load_by_key(c, &tx.idempotency_key).await? {
        return if fp == fingerprint {
            Ok(Posted::Replayed(existing))
        } else {
            Err(BillingError::IdempotencyConflict(
                tx.idempotency_key.clone(),
            ))
        };
    }
    // Wallet movements first: if a guard refuses, nothing has been written yet.
    let mut wallet_deltas: BTreeMap<UserId, Decimal> = BTreeMap::new();
    for e in &tx.entries {
        if let Account::Wallet(u) = &e.account {
            *wallet_deltas.entry(u.clone()).or_default() += e.account.natural(e.amount.amount());
        }
    }
    for (user, delta) in &wallet_deltas {
        let guarded = tx.guarded && *delta < Decimal::ZERO;
        move_wallet(c, d, user, Money::new(*delta, currency), guarded, now).await?;
    }
    let id = new_id("txn");
    sqlx::query(
        "INSERT INTO billing_transactions (id, idempotency_key, kind, user_id, currency, memo, fingerprint, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&tx.idempotency_key)
    .bind(tx.kind.as_str())
    .bind(tx.user_id.as_ref().map(|u| u.as_str().to_owned()))
    .bind(currency.code())
    .bind(&tx.memo)
    .bind(&fingerprint)
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    for (pos, e) in tx.entries.iter().enumerate() {
        sqlx::query(
            "INSERT INTO billing_entries (tx_id, position, account, currency, amount) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(pos as i64)
        .bind(e.account.key())
        .bind(e.amount.currency().code())
        .bind(e.amount.amount().to_string())
        .execute(&mut *c)
        .await?;
    }
    Ok(Posted::New(Transaction {
        id,
        idempotency_key: tx.idempotency_key.clone(),
        kind: tx.kind,
        user_id: tx.user_id.clone(),
        memo: tx.memo.clone(),
        entries: tx.entries.clone(),
        created_at: from_ts(ts(now))?,
    }))
}

/// Make sure the wallet row exists (zero balance, zero credit limit).
pub(crate) async fn ensure_wallet(
    c: &mut AnyConnection,
    user: &UserId,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO billing_wallets (user_id, currency, balance, credit_limit, updated_at) \
         VALUES ($1, $2, '0', '0', $3) ON CONFLICT (user_id, currency) DO NOTHING",
    )
    .bind(user.as_str())
    .bind(currency.code())
    .bind(ts(now))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Change the cached balance by `delta` (natural sign). With `guarded`, refuse when the
/// result would be below minus the credit limit.
async fn move_wallet(
    c: &mut AnyConnection,
    d: Dialect,
    user: &UserId,
    delta: Money,
    guarded: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    ensure_wallet(c, user, delta.currency(), now).await?;
    match d {
        Dialect::Postgres => {
            // One statement: the row lock makes concurrent debits queue, and the guard is
            // re-evaluated on the committed balance after the wait.
            let updated = sqlx::query(
                "UPDATE billing_wallets \
                 SET balance = (balance::numeric + $3::numeric)::text, updated_at = $4 \
                 WHERE user_id = $1 AND currency = $2 \
                   AND ($5 = 0 OR balance::numeric + $3::numeric >= -(credit_limit::numeric))",
            )
            .bind(user.as_str())
            .bind(delta.currency().code())
            .bind(delta.amount().to_string())
            .bind(ts(now))
            .bind(i64::from(guarded))
            .execute(&mut *c)
            .await?;
            if updated.rows_affected() == 1 {
                return Ok(());
            }
            let w = read_wallet(c, user, delta.currency()).await?;
            Err(BillingError::InsufficientFunds {
                balance: w.balance,
                credit_limit: w.credit_limit,
                requested: delta.negated(),
            })
        }
        Dialect::Sqlite => {
            let w = read_wallet(c, user, delta.currency()).await?;
            let new = w.balance.checked_add(&delta)?;
            if guarded && new.checked_cmp(&w.credit_limit.negated())? == std::cmp::Ordering::Less {
                return Err(BillingError::InsufficientFunds {
                    balance: w.balance,
                    credit_limit: w.credit_limit,
                    requested: delta.negated(),
                });
            }
            // Compare-and-set on the balance read above.
            let updated = sqlx::query(
                "UPDATE billing_wallets SET balance = $3, updated_at = $4 \
                 WHERE user_id = $1 AND currency = $2 AND balance = $5",
            )
            .bind(user.as_str())
            .bind(delta.currency().code())
            .bind(new.amount().to_string())
            .bind(ts(now))
            .bind(w.balance.amount().to_string())
            .execute(&mut *c)
            .await?;
            if updated.rows_affected() == 1 {
                Ok(())
            } else {
                Err(BillingError::Conflict("wallet balance changed".into()))
            }
        }
    }
}

pub(crate) async fn read_wallet(
    c: &mut AnyConnection,
    user: &UserId,
    currency: Currency,
) -> Result<Wallet> {
    let row = sqlx::query(
        "SELECT balance, credit_limit FROM billing_wallets WHERE user_id = $1 AND currency = $2",
    )
    .bind(user.as_str())
    .bind(currency.code())
    .fetch_optional(&mut *c)
    .await?;
    Ok(match row {
        Some(r) => Wallet {
            user_id: user.clone(),
            balance: Money::new(dec(&s(&r, "balance")?)?, currency),
            credit_limit: Money::new(dec(&s(&r, "credit_limit")?)?, currency),
        },
        None => Wallet {
            user_id: user.clone(),
            balance: Money::zero(currency),
            credit_limit: Money::zero(currency),
        },
    })
}

/// The transaction posted under `key` and its fingerprint.
pub(crate) async fn load_by_key(
    c: &mut AnyConnection,
    key: &str,
) -> Result<Option<(Transaction, String)>> {
    let row = sqlx::query(
        "SELECT id, idempotency_key, kind, user_id, memo, fingerprint, created_at \
         FROM billing_transactions WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id = s(&row, "id")?;
    let entries = sqlx::query(
        "SELECT account, currency, amount FROM billing_entries WHERE tx_id = $1 ORDER BY position",
    )
    .bind(&id)
    .fetch_all(&mut *c)
    .await?
    .iter()
    .map(|e| {
        Ok(Entry {
            account: s(e, "account")?.parse()?,
            amount: money(&s(e, "amount")?, &s(e, "currency")?)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    let tx = Transaction {
        id,
        idempotency_key: s(&row, "idempotency_key")?,
        kind: s(&row, "kind")?.parse()?,
        user_id: opt_s(&row, "user_id")?.map(|u| parse(&u)).transpose()?,
        memo: s(&row, "memo")?,
        entries,
        created_at: from_ts(i(&row, "created_at")?)?,
    };
    Ok(Some((tx, s(&row, "fingerprint")?)))
}

/// `text` with LIKE's wildcards escaped (escape character `\\`).
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

impl SqlBillingStore {
    pub(super) async fn refund_charge_impl(
        &self,
        charge_key: &str,
        amount: Money,
        reason: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Posted> {
        if amount.is_negative() || amount.is_zero() {
            return Err(BillingError::InvalidInput(
                "a refund must be positive".into(),
            ));
        }
        if reason.trim().is_empty() || reason.len() > 500 {
            return Err(BillingError::InvalidInput(
                "a refund needs a reason (1 to 500 characters)".into(),
            ));
        }
        let mut db = self.pool.begin().await?;
        let (charge, _) =
            load_by_key(&mut db, charge_key)
                .await?
                .ok_or_else(|| BillingError::NotFound {
                    kind: "charge",
                    id: charge_key.to_owned(),
                })?;
        let user = match (&charge.kind, &charge.user_id) {
            (TxKind::PlanCharge | TxKind::UsageCharge, Some(u)) => u.clone(),
            _ => {
                return Err(BillingError::InvalidInput(format!(
                    "`{charge_key}` is not a charge paid from a wallet"
                )))
            }
        };
        let wallet = Account::Wallet(user.clone());
        let paid = charge.net_for(&wallet);
        if amount.currency() != charge.entries[0].amount.currency() {
            return Err(BillingError::InvalidInput(
                "refund in another currency than the charge".into(),
            ));
        }
        let prefix = format!("refund-charge:{charge_key}:");
        let tx = NewTransaction {
            idempotency_key: format!("{prefix}{key}"),
            kind: TxKind::ChargeRefund,
            user_id: Some(user.clone()),
            memo: reason.to_owned(),
            entries: vec![
                Entry::debit(Account::Refunds, amount),
                Entry::credit(wallet.clone(), amount),
            ],
            guarded: false,
        };
        if let Some((existing, fp)) = load_by_key(&mut db, &tx.idempotency_key).await? {
            return if fp == tx.fingerprint() {
                Ok(Posted::Replayed(existing))
            } else {
                Err(BillingError::IdempotencyConflict(tx.idempotency_key))
            };
        }
        // Serialise refunds of one user's charges on the wallet row, then check the cap.
        ensure_wallet(&mut db, &user, amount.currency(), now).await?;
        sqlx::query("UPDATE billing_wallets SET updated_at = updated_at WHERE user_id = $1 AND currency = $2")
            .bind(user.as_str())
            .bind(amount.currency().code())
            .execute(&mut *db)
            .await?;
        let rows = sqlx::query(
            "SELECT e.amount FROM billing_entries e JOIN billing_transactions t ON t.id = e.tx_id \
             WHERE t.idempotency_key LIKE $1 ESCAPE '\\' AND e.account = $2",
        )
        .bind(format!("{}%", like_escape(&prefix)))
        .bind(wallet.key())
        .fetch_all(&mut *db)
        .await?;
        let mut refunded = Decimal::ZERO;
        for r in &rows {
            refunded -= dec(&s(r, "amount")?)?;
        }
        if refunded + amount.amount() > paid {
            return Err(BillingError::InvalidInput(format!(
                "refunds would total {} but the charge took {}",
                refunded + amount.amount(),
                paid
            )));
        }
        let posted = post_in(&mut db, self.dialect, &tx, now).await?;
        db.commit().await?;
        Ok(posted)
    }

    pub(super) async fn post_once(
        &self,
        tx: &NewTransaction,
        now: DateTime<Utc>,
    ) -> Result<Posted> {
        let mut db = self.pool.begin().await?;
        let posted = post_in(&mut db, self.dialect, tx, now).await?;
        if posted.is_new() {
            db.commit().await?;
        }
        Ok(posted)
    }

    pub(super) async fn transactions_impl(
        &self,
        user: Option<&UserId>,
    ) -> Result<Vec<Transaction>> {
        let base = "SELECT t.id, t.idempotency_key, t.kind, t.user_id, t.memo, t.created_at, \
                    e.account, e.currency, e.amount \
                    FROM billing_transactions t JOIN billing_entries e ON e.tx_id = t.id";
        let rows = match user {
            Some(u) => {
                sqlx::query(&format!(
                    "{base} WHERE t.user_id = $1 ORDER BY t.seq, e.position"
                ))
                .bind(u.as_str())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{base} ORDER BY t.seq, e.position"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut out: Vec<Transaction> = Vec::new();
        for r in &rows {
            let id = s(r, "id")?;
            let entry = Entry {
                account: s(r, "account")?.parse()?,
                amount: money(&s(r, "amount")?, &s(r, "currency")?)?,
            };
            match out.last_mut() {
                Some(t) if t.id == id => t.entries.push(entry),
                _ => out.push(Transaction {
                    id,
                    idempotency_key: s(r, "idempotency_key")?,
                    kind: s(r, "kind")?.parse()?,
                    user_id: opt_s(r, "user_id")?.map(|u| parse(&u)).transpose()?,
                    memo: s(r, "memo")?,
                    entries: vec![entry],
                    created_at: from_ts(i(r, "created_at")?)?,
                }),
            }
        }
        Ok(out)
    }

    pub(super) async fn wallets_impl(&self) -> Result<Vec<Wallet>> {
        let rows = sqlx::query(
            "SELECT user_id, currency, balance, credit_limit FROM billing_wallets ORDER BY user_id, currency",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let currency = s(r, "currency")?;
                Ok(Wallet {
                    user_id: parse(&s(r, "user_id")?)?,
                    balance: money(&s(r, "balance")?, &currency)?,
                    credit_limit: money(&s(r, "credit_limit")?, &currency)?,
                })
            })
            .collect()
    }

    pub(super) async fn set_credit_limit_impl(
        &self,
        user: &UserId,
        limit: Money,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Wallet> {
        if limit.is_negative() {
            return Err(BillingError::InvalidInput(
                "credit limit must not be negative (it is how far below zero a wallet may go)"
                    .into(),
            ));
        }
        let mut db = self.pool.begin().await?;
        ensure_wallet(&mut db, user, limit.currency(), now).await?;
        sqlx::query(
            "UPDATE billing_wallets SET credit_limit = $3, updated_at = $4 WHERE user_id = $1 AND currency = $2",
        )
        .bind(user.as_str())
        .bind(limit.currency().code())
        .bind(limit.amount().to_string())
        .bind(ts(now))
        .execute(&mut *db)
        .await?;
        super::audit_in(
            &mut db,
            actor,
            "wallet.set_credit_limit",
            &format!("wallet:{user}"),
            &serde_json::json!({ "credit_limit": limit }),
            now,
        )
        .await?;
        let w = read_wallet(&mut db, user, limit.currency()).await?;
        db.commit().await?;
        Ok(w)
    }

    pub(super) async fn derived_balance_impl(
        &self,
        account: &Account,
        currency: Currency,
    ) -> Result<Money> {
        let rows =
            sqlx::query("SELECT amount FROM billing_entries WHERE account = $1 AND currency = $2")
                .bind(account.key())
                .bind(currency.code())
                .fetch_all(&self.pool)
                .await?;
        let mut sum = Decimal::ZERO;
        for r in &rows {
            sum = sum
                .checked_add(dec(&s(r, "amount")?)?)
                .ok_or(relay_core::MoneyError::Overflow)?;
        }
        Ok(Money::new(account.natural(sum), currency))
    }
}
