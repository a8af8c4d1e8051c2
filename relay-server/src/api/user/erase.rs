//! Personal data outside relay-auth, erased with the account.
//!
//! Where a deleted user's email can still be, and what happens to it:
//! - relay-auth's tables: erased by `AccountService::erase` (email replaced by
//!   `deleted+<user id>@erased.invalid`, password, TOTP, sessions, tokens removed).
//! - the notification outbox (`server_outbox`, on billing's pool): rows addressed to the
//!   user, or whose subject, bodies or payload name the address, lose them (and the
//!   recipient, when it is the user); pending ones are ended so they are never sent.
//! - billing (orders, invoices, ledger, usage batches) and payments (webhook dedupe) name
//!   only the opaque user id: kept, as the law requires for accounting records.
//! - the audit log is append-only and records ids, not addresses.

use relay_auth::Email;
use relay_core::UserId;

use crate::api::error::ApiResult;
use crate::api::ApiState;
use crate::audit::sql::{dialect, Dialect};

/// Does `table` exist on billing's pool? (The outbox is created only when mail is on.)
async fn table_exists(s: &ApiState, table: &str) -> ApiResult<bool> {
    let pool = s.billing_sql.pool();
    let sql = match dialect(pool).await? {
        Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_name = $1 AND table_schema = current_schema()"
        }
    };
    let (n,): (i64,) = sqlx::query_as(sql).bind(table).fetch_one(pool).await?;
    Ok(n > 0)
}

/// Anonymise the outbox rows of `email` (see the module docs). Returns how many changed.
pub async fn erase_outbox(s: &ApiState, user: &UserId, email: &Email) -> ApiResult<u64> {
    if !table_exists(s, "server_outbox").await? {
        return Ok(0);
    }
    let placeholder = relay_auth::profile::erased_email(user);
    // `_` is legal in an address and a LIKE wildcard: escape the wildcards.
    let needle = format!(
        "%{}%",
        email
            .as_str()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let r = sqlx::query(
        "UPDATE server_outbox SET \
         recipient = CASE WHEN recipient = $2 THEN $1 ELSE recipient END, \
         subject = '', body_text = '', body_html = '', payload = '{}', \
         last_error = 'erased with the account', \
         status = CASE WHEN status = 'pending' THEN 'dead' ELSE status END \
         WHERE recipient = $2 OR payload LIKE $3 ESCAPE '\\' OR subject LIKE $3 ESCAPE '\\' \
         OR body_text LIKE $3 ESCAPE '\\' OR body_html LIKE $3 ESCAPE '\\'",
    )
    .bind(placeholder.as_str())
    .bind(email.as_str())
    .bind(needle)
    .execute(s.billing_sql.pool())
    .await?;
    Ok(r.rows_affected())
}
