//! Redemption codes.

use chrono::{DateTime, Utc};
use relay_core::{Money, UserId};

use super::ledger::post_in;
use super::{money, opt_s, opt_ts, parse, s, ts, SqlBillingStore};
use crate::error::{BillingError, CodeRejection, Result};
use crate::ledger::{Account, Entry, NewTransaction, Posted, TxKind};
use crate::redemption::{normalize, RedemptionCode};

impl SqlBillingStore {
    pub(super) async fn create_codes_impl(
        &self,
        batch_id: &str,
        codes: &[String],
        value: Money,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if batch_id.trim().is_empty() || batch_id.len() > 100 {
            return Err(BillingError::InvalidInput(
                "batch id must be 1 to 100 characters".into(),
            ));
        }
        if value.is_negative() || value.is_zero() {
            return Err(BillingError::InvalidInput(
                "a code's value must be positive".into(),
            ));
        }
        if codes.is_empty() || codes.len() > 100_000 {
            return Err(BillingError::InvalidInput(
                "a batch holds 1 to 100000 codes".into(),
            ));
        }
        if expires_at.is_some_and(|e| e <= now) {
            return Err(BillingError::InvalidInput(
                "codes must expire in the future".into(),
            ));
        }
        let mut db = self.pool.begin().await?;
        for code in codes {
            let canonical = normalize(code)?;
            sqlx::query(
                "INSERT INTO billing_redemption_codes (code, batch_id, amount, currency, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&canonical)
            .bind(batch_id)
            .bind(value.amount().to_string())
            .bind(value.currency().code())
            .bind(expires_at.map(ts))
            .bind(ts(now))
            .execute(&mut *db)
            .await
            .map_err(|e| match BillingError::from(e) {
                BillingError::Conflict(_) => BillingError::InvalidInput(format!("code {canonical} exists already")),
                other => other,
            })?;
        }
        db.commit().await?;
        Ok(())
    }

    pub(super) async fn redeem_impl(
        &self,
        code: &str,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Posted> {
        let code = normalize(code)?;
        let mut db = self.pool.begin().await?;
        // One conditional UPDATE claims the code: concurrent redemptions queue on the row
        // and re-check the condition after the winner commits, so exactly one succeeds.
        let claimed = sqlx::query(
            "UPDATE billing_redemption_codes SET redeemed_by = $2, redeemed_at = $3 \
             WHERE code = $1 AND redeemed_by IS NULL AND (expires_at IS NULL OR expires_at > $3) \
             RETURNING amount, currency",
        )
        .bind(&code)
        .bind(user.as_str())
        .bind(ts(now))
        .fetch_optional(&mut *db)
        .await?;
        let Some(row) = claimed else {
            let reason = match self.code_in(&mut db, &code).await? {
                None => CodeRejection::Unknown,
                Some(c) if c.redeemed_by.is_some() => CodeRejection::AlreadyRedeemed,
                Some(_) => CodeRejection::Expired,
            };
            return Err(BillingError::Code(reason));
        };
        let value = money(&s(&row, "amount")?, &s(&row, "currency")?)?;
        let tx = NewTransaction {
            idempotency_key: format!("redeem:{code}"),
            kind: TxKind::Promotion,
            user_id: Some(user.clone()),
            memo: format!("redemption code {code}"),
            entries: vec![
                Entry::debit(Account::Promotions, value),
                Entry::credit(Account::Wallet(user.clone()), value),
            ],
            guarded: true,
        };
        let posted = post_in(&mut db, self.dialect, &tx, now).await?;
        super::audit_in(
            &mut db,
            &format!("user:{user}"),
            "code.redeem",
            &code,
            &serde_json::json!({ "value": value }),
            now,
        )
        .await?;
        db.commit().await?;
        Ok(posted)
    }

    async fn code_in(
        &self,
        c: &mut sqlx::AnyConnection,
        code: &str,
    ) -> Result<Option<RedemptionCode>> {
        let row = sqlx::query(
            "SELECT code, batch_id, amount, currency, expires_at, redeemed_by, redeemed_at \
             FROM billing_redemption_codes WHERE code = $1",
        )
        .bind(code)
        .fetch_optional(&mut *c)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(RedemptionCode {
            code: s(&r, "code")?,
            batch_id: s(&r, "batch_id")?,
            value: money(&s(&r, "amount")?, &s(&r, "currency")?)?,
            expires_at: opt_ts(&r, "expires_at")?,
            redeemed_by: opt_s(&r, "redeemed_by")?.map(|u| parse(&u)).transpose()?,
            redeemed_at: opt_ts(&r, "redeemed_at")?,
        }))
    }

    pub(super) async fn code_impl(&self, code: &str) -> Result<Option<RedemptionCode>> {
        let code = normalize(code)?;
        let mut c = self.pool.acquire().await?;
        self.code_in(&mut c, &code).await
    }
}
