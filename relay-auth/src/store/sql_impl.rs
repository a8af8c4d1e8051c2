//! The SQL of every auth store, written once and stamped out for SQLite and PostgreSQL.
//!
//! Statements use `$N` placeholders; the SQLite backend rewrites them to `?N`, which SQLite
//! reads the same way. Rows are fetched as tuples and decoded by the shared functions in
//! [`super::sql`], so the two backends cannot drift apart.

macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        use async_trait::async_trait;
        use chrono::{DateTime, Utc};
        use relay_core::{ApiKeyId, KeyPolicy, UserId};

        use crate::email::Email;
        use crate::error::TokenError;
        use crate::keys::limits::KeyLimits;
        use crate::model::{
            ApiKeyRecord, KeyUse, OneTimeToken, RiskFlag, SessionRecord, StatusChange,
            TokenPurpose, TotpRecord, User, UserFilter,
        };
        use crate::role::Role;
        use crate::store::sql::{
            backend, decode_change, decode_flag, decode_key, decode_session, decode_user,
            encode_key, encode_limits, ms, opt_ms, opt_time, ChangeRow, FlagRow, KeyRow,
            SessionRow, UserRow, CHANGE_COLS, FLAG_COLS, KEY_COLS, SESSION_COLS, USER_COLS,
        };
        use crate::store::{KeyStore, SessionStore, StoreError, UserStore, MAX_USER_PAGE};

        #[async_trait]
        impl UserStore for $store {
            async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
                let sql = q("INSERT INTO auth_users (id, email, password_hash, role, status, source, email_verified_at, created_at, display_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
                sqlx::query(&sql)
                    .bind(user.id.as_str())
                    .bind(user.email.as_str())
                    .bind(user.password_hash.as_deref())
                    .bind(user.role.as_str())
                    .bind(user.status.as_str())
                    .bind(user.source.as_str())
                    .bind(opt_ms(user.email_verified_at))
                    .bind(ms(user.created_at))
                    .bind(user.display_name.as_deref())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| match backend(e) {
                        StoreError::Conflict(_) => StoreError::Conflict("email"),
                        other => other,
                    })?;
                Ok(())
            }

            async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
                let sql = q(&format!("SELECT {USER_COLS} FROM auth_users WHERE id = $1"));
                let row: Option<UserRow> = sqlx::query_as(&sql)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                row.map(decode_user).transpose()
            }

            async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
                let sql = q(&format!("SELECT {USER_COLS} FROM auth_users WHERE email = $1"));
                let row: Option<UserRow> = sqlx::query_as(&sql)
                    .bind(email.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                row.map(decode_user).transpose()
            }

            async fn set_password_hash(&self, id: &UserId, hash: &str) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_users SET password_hash = $1 WHERE id = $2");
                let r = sqlx::query(&sql).bind(hash).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn set_email_verified(&self, id: &UserId, at: DateTime<Utc>) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_users SET email_verified_at = COALESCE(email_verified_at, $1) WHERE id = $2");
                let r = sqlx::query(&sql).bind(ms(at)).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn set_role(&self, id: &UserId, role: Role) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_users SET role = $1 WHERE id = $2");
                let r = sqlx::query(&sql).bind(role.as_str()).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn transition_status(&self, change: &StatusChange) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("UPDATE auth_users SET status = $1 WHERE id = $2 AND status = $3");
                let r = sqlx::query(&sql)
                    .bind(change.to.as_str())
                    .bind(change.user_id.as_str())
                    .bind(change.from.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if r.rows_affected() == 0 {
                    return Ok(false);
                }
                let sql = q("INSERT INTO auth_status_changes (user_id, from_status, to_status, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6)");
                sqlx::query(&sql)
                    .bind(change.user_id.as_str())
                    .bind(change.from.as_str())
                    .bind(change.to.as_str())
                    .bind(change.actor.as_ref().map(|a| a.as_str()))
                    .bind(change.reason.as_str())
                    .bind(ms(change.at))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn status_history(&self, id: &UserId) -> Result<Vec<StatusChange>, StoreError> {
                let sql = q(&format!("SELECT {CHANGE_COLS} FROM auth_status_changes WHERE user_id = $1 ORDER BY seq"));
                let rows: Vec<ChangeRow> = sqlx::query_as(&sql).bind(id.as_str()).fetch_all(&self.pool).await.map_err(backend)?;
                rows.into_iter().map(decode_change).collect()
            }

            async fn insert_token(&self, token: &OneTimeToken) -> Result<(), StoreError> {
                let sql = q("INSERT INTO auth_tokens (hash, user_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)");
                sqlx::query(&sql)
                    .bind(&token.hash[..])
                    .bind(token.user_id.as_str())
                    .bind(token.purpose.as_str())
                    .bind(ms(token.created_at))
                    .bind(ms(token.expires_at))
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn consume_token(
                &self,
                hash: &[u8; 32],
                purpose: TokenPurpose,
                now: DateTime<Utc>,
            ) -> Result<Result<UserId, TokenError>, StoreError> {
                let sql = q("UPDATE auth_tokens SET used_at = $1 WHERE hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1 RETURNING user_id");
                let won: Option<(String,)> = sqlx::query_as(&sql)
                    .bind(ms(now))
                    .bind(&hash[..])
                    .bind(purpose.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                if let Some((user,)) = won {
                    return Ok(Ok(crate::store::sql::parse(&user, "user id")?));
                }
                let sql = q("SELECT used_at, expires_at FROM auth_tokens WHERE hash = $1 AND purpose = $2");
                let why: Option<(Option<i64>, i64)> = sqlx::query_as(&sql)
                    .bind(&hash[..])
                    .bind(purpose.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(Err(match why {
                    None => TokenError::Unknown,
                    Some((Some(_), _)) => TokenError::AlreadyUsed,
                    Some((None, _)) => TokenError::Expired,
                }))
            }

            async fn totp(&self, id: &UserId) -> Result<Option<TotpRecord>, StoreError> {
                let sql = q("SELECT sealed_secret, enabled_at, last_step FROM auth_totp WHERE user_id = $1");
                let row: Option<(Vec<u8>, Option<i64>, Option<i64>)> = sqlx::query_as(&sql)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                row.map(|(sealed_secret, enabled, last_step)| {
                    Ok(TotpRecord { sealed_secret, enabled_at: opt_time(enabled)?, last_step })
                })
                .transpose()
            }

            async fn set_totp(
                &self,
                id: &UserId,
                record: Option<&TotpRecord>,
                recovery_hashes: &[[u8; 32]],
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                for sql in ["DELETE FROM auth_totp WHERE user_id = $1", "DELETE FROM auth_recovery_codes WHERE user_id = $1"] {
                    sqlx::query(&q(sql)).bind(id.as_str()).execute(&mut *tx).await.map_err(backend)?;
                }
                if let Some(r) = record {
                    let sql = q("INSERT INTO auth_totp (user_id, sealed_secret, enabled_at, last_step) VALUES ($1, $2, $3, $4)");
                    sqlx::query(&sql)
                        .bind(id.as_str())
                        .bind(&r.sealed_secret[..])
                        .bind(opt_ms(r.enabled_at))
                        .bind(r.last_step)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                    let sql = q("INSERT INTO auth_recovery_codes (user_id, hash) VALUES ($1, $2)");
                    for h in recovery_hashes {
                        sqlx::query(&sql).bind(id.as_str()).bind(&h[..]).execute(&mut *tx).await.map_err(backend)?;
                    }
                }
                tx.commit().await.map_err(backend)?;
                Ok(())
            }

            async fn enable_totp(&self, id: &UserId, at: DateTime<Utc>) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_totp SET enabled_at = COALESCE(enabled_at, $1) WHERE user_id = $2");
                let r = sqlx::query(&sql).bind(ms(at)).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn use_totp_step(&self, id: &UserId, step: i64) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_totp SET last_step = $1 WHERE user_id = $2 AND (last_step IS NULL OR last_step < $1)");
                let r = sqlx::query(&sql).bind(step).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn use_recovery_code(&self, id: &UserId, hash: &[u8; 32]) -> Result<bool, StoreError> {
                let sql = q("DELETE FROM auth_recovery_codes WHERE user_id = $1 AND hash = $2");
                let r = sqlx::query(&sql).bind(id.as_str()).bind(&hash[..]).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn set_display_name(&self, id: &UserId, name: Option<&str>) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_users SET display_name = $1 WHERE id = $2");
                let r = sqlx::query(&sql).bind(name).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn insert_email_change(&self, token: &OneTimeToken, new_email: &Email) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("INSERT INTO auth_tokens (hash, user_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)");
                sqlx::query(&sql)
                    .bind(&token.hash[..])
                    .bind(token.user_id.as_str())
                    .bind(token.purpose.as_str())
                    .bind(ms(token.created_at))
                    .bind(ms(token.expires_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                let sql = q("INSERT INTO auth_email_changes (token_hash, user_id, new_email) VALUES ($1, $2, $3)");
                sqlx::query(&sql)
                    .bind(&token.hash[..])
                    .bind(token.user_id.as_str())
                    .bind(new_email.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(())
            }

            async fn confirm_email_change(
                &self,
                hash: &[u8; 32],
                now: DateTime<Utc>,
            ) -> Result<Result<(UserId, Email), TokenError>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("UPDATE auth_tokens SET used_at = $1 WHERE hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1 RETURNING user_id");
                let won: Option<(String,)> = sqlx::query_as(&sql)
                    .bind(ms(now))
                    .bind(&hash[..])
                    .bind(TokenPurpose::ChangeEmail.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                let Some((user,)) = won else {
                    let sql = q("SELECT used_at FROM auth_tokens WHERE hash = $1 AND purpose = $2");
                    let why: Option<(Option<i64>,)> = sqlx::query_as(&sql)
                        .bind(&hash[..])
                        .bind(TokenPurpose::ChangeEmail.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                    return Ok(Err(match why {
                        None => TokenError::Unknown,
                        Some((Some(_),)) => TokenError::AlreadyUsed,
                        Some((None,)) => TokenError::Expired,
                    }));
                };
                let sql = q("SELECT new_email FROM auth_email_changes WHERE token_hash = $1");
                let row: Option<(String,)> = sqlx::query_as(&sql).bind(&hash[..]).fetch_optional(&mut *tx).await.map_err(backend)?;
                let Some((email,)) = row else {
                    return Err(StoreError::Corrupt("email change without an address".into()));
                };
                let email: Email = crate::store::sql::parse(&email, "email")?;
                let sql = q("UPDATE auth_users SET email = $1, email_verified_at = $2 WHERE id = $3");
                sqlx::query(&sql)
                    .bind(email.as_str())
                    .bind(ms(now))
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match backend(e) {
                        StoreError::Conflict(_) => StoreError::Conflict("email"),
                        other => other,
                    })?;
                let sql = q("DELETE FROM auth_email_changes WHERE token_hash = $1");
                sqlx::query(&sql).bind(&hash[..]).execute(&mut *tx).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(Ok((crate::store::sql::parse(&user, "user id")?, email)))
            }

            async fn erase_user(
                &self,
                id: &UserId,
                placeholder: &Email,
                actor: Option<&UserId>,
                reason: &str,
                at: DateTime<Utc>,
            ) -> Result<Option<StatusChange>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("SELECT status FROM auth_users WHERE id = $1");
                let row: Option<(String,)> = sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(&mut *tx).await.map_err(backend)?;
                let Some((from,)) = row else { return Ok(None) };
                let change = StatusChange {
                    user_id: id.clone(),
                    from: crate::store::sql::parse(&from, "status")?,
                    to: relay_core::AccountStatus::Closed,
                    actor: actor.cloned(),
                    reason: reason.to_owned(),
                    at,
                };
                let sql = q("UPDATE auth_users SET email = $1, password_hash = NULL, display_name = NULL, status = $2 WHERE id = $3");
                sqlx::query(&sql)
                    .bind(placeholder.as_str())
                    .bind(change.to.as_str())
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                for sql in [
                    "DELETE FROM auth_totp WHERE user_id = $1",
                    "DELETE FROM auth_recovery_codes WHERE user_id = $1",
                    "DELETE FROM auth_tokens WHERE user_id = $1",
                    "DELETE FROM auth_email_changes WHERE user_id = $1",
                    "DELETE FROM auth_sessions WHERE user_id = $1",
                    "DELETE FROM auth_risk_flags WHERE user_id = $1",
                    "DELETE FROM auth_key_limits WHERE user_id = $1",
                ] {
                    sqlx::query(&q(sql)).bind(id.as_str()).execute(&mut *tx).await.map_err(backend)?;
                }
                let sql = q("UPDATE auth_api_keys SET revoked_at = COALESCE(revoked_at, $1), name = 'erased', tags = '[]' WHERE user_id = $2");
                sqlx::query(&sql).bind(ms(at)).bind(id.as_str()).execute(&mut *tx).await.map_err(backend)?;
                let sql = q("INSERT INTO auth_status_changes (user_id, from_status, to_status, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6)");
                sqlx::query(&sql)
                    .bind(id.as_str())
                    .bind(change.from.as_str())
                    .bind(change.to.as_str())
                    .bind(change.actor.as_ref().map(|a| a.as_str()))
                    .bind(change.reason.as_str())
                    .bind(ms(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(Some(change))
            }

            async fn purge_tokens(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("DELETE FROM auth_email_changes WHERE token_hash IN (SELECT hash FROM auth_tokens WHERE used_at < $1 OR expires_at < $1)");
                sqlx::query(&sql).bind(ms(before)).execute(&mut *tx).await.map_err(backend)?;
                let sql = q("DELETE FROM auth_tokens WHERE used_at < $1 OR expires_at < $1");
                let r = sqlx::query(&sql).bind(ms(before)).execute(&mut *tx).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(r.rows_affected())
            }

            async fn list_users(&self, f: &UserFilter) -> Result<Vec<User>, StoreError> {
                // Clauses and their values in placeholder order.
                let mut clauses: Vec<String> = Vec::new();
                let mut texts: Vec<String> = Vec::new();
                let next = |clauses: &mut Vec<String>, texts: &mut Vec<String>, clause: &str, value: String| {
                    texts.push(value);
                    clauses.push(clause.replace('#', &format!("${}", texts.len())));
                };
                if let Some(e) = &f.email_contains {
                    let escaped = e.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                    next(&mut clauses, &mut texts, "email LIKE # ESCAPE '\\'", format!("%{escaped}%"));
                }
                if let Some(s) = f.status {
                    next(&mut clauses, &mut texts, "status = #", s.as_str().to_owned());
                }
                if let Some(r) = f.role {
                    next(&mut clauses, &mut texts, "role = #", r.as_str().to_owned());
                }
                if let Some(flag) = &f.flag {
                    next(&mut clauses, &mut texts, "EXISTS (SELECT 1 FROM auth_risk_flags rf WHERE rf.user_id = auth_users.id AND rf.flag = #)", flag.clone());
                }
                match f.flagged {
                    Some(true) => clauses.push("EXISTS (SELECT 1 FROM auth_risk_flags rf WHERE rf.user_id = auth_users.id)".into()),
                    Some(false) => clauses.push("NOT EXISTS (SELECT 1 FROM auth_risk_flags rf WHERE rf.user_id = auth_users.id)".into()),
                    None => {}
                }
                let mut cursor_at = None;
                if let Some((at, id)) = &f.before {
                    next(&mut clauses, &mut texts, "(created_at < #X OR (created_at = #X AND id < #))", id.as_str().to_owned());
                    cursor_at = Some(ms(*at));
                }
                let n = texts.len();
                let mut sql = format!("SELECT {USER_COLS} FROM auth_users");
                if !clauses.is_empty() {
                    sql.push_str(" WHERE ");
                    sql.push_str(&clauses.join(" AND "));
                }
                // `#X` is the cursor's time, bound after the text values.
                let sql = sql.replace(&format!("${n}X"), &format!("${}", n + 1));
                let sql = format!("{sql} ORDER BY created_at DESC, id DESC LIMIT {}", f.limit.clamp(1, MAX_USER_PAGE));
                let sql = q(&sql);
                let mut query = sqlx::query_as::<_, UserRow>(&sql);
                for t in &texts {
                    query = query.bind(t.as_str());
                }
                if let Some(at) = cursor_at {
                    query = query.bind(at);
                }
                let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
                rows.into_iter().map(decode_user).collect()
            }

            async fn set_risk_flag(&self, id: &UserId, flag: &RiskFlag) -> Result<bool, StoreError> {
                let sql = q("INSERT INTO auth_risk_flags (user_id, flag, reason, actor, set_at) SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM auth_users WHERE id = $1) ON CONFLICT (user_id, flag) DO UPDATE SET reason = excluded.reason, actor = excluded.actor, set_at = excluded.set_at");
                let r = sqlx::query(&sql)
                    .bind(id.as_str())
                    .bind(flag.flag.as_str())
                    .bind(flag.reason.as_str())
                    .bind(flag.actor.as_ref().map(|a| a.as_str()))
                    .bind(ms(flag.set_at))
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn clear_risk_flag(&self, id: &UserId, flag: &str) -> Result<bool, StoreError> {
                let sql = q("DELETE FROM auth_risk_flags WHERE user_id = $1 AND flag = $2");
                let r = sqlx::query(&sql).bind(id.as_str()).bind(flag).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn risk_flags(&self, id: &UserId) -> Result<Vec<RiskFlag>, StoreError> {
                let sql = q(&format!("SELECT {FLAG_COLS} FROM auth_risk_flags WHERE user_id = $1 ORDER BY flag"));
                let rows: Vec<FlagRow> = sqlx::query_as(&sql).bind(id.as_str()).fetch_all(&self.pool).await.map_err(backend)?;
                rows.into_iter().map(decode_flag).collect()
            }
        }

        #[async_trait]
        impl SessionStore for $store {
            async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
                let sql = q("INSERT INTO auth_sessions (hash, csrf_hash, user_id, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)");
                sqlx::query(&sql)
                    .bind(&s.hash[..])
                    .bind(&s.csrf_hash[..])
                    .bind(s.user_id.as_str())
                    .bind(ms(s.created_at))
                    .bind(ms(s.expires_at))
                    .bind(opt_ms(s.revoked_at))
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
                let sql = q(&format!("SELECT {SESSION_COLS} FROM auth_sessions WHERE hash = $1"));
                let row: Option<SessionRow> = sqlx::query_as(&sql).bind(&hash[..]).fetch_optional(&self.pool).await.map_err(backend)?;
                row.map(decode_session).transpose()
            }

            async fn revoke_session(&self, hash: &[u8; 32], at: DateTime<Utc>) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_sessions SET revoked_at = $1 WHERE hash = $2 AND revoked_at IS NULL");
                let r = sqlx::query(&sql).bind(ms(at)).bind(&hash[..]).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn revoke_user_sessions(
                &self,
                user: &UserId,
                keep: Option<&[u8; 32]>,
                at: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                let sql = q("UPDATE auth_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL AND hash <> $3");
                // An all-zero hash is never a session's (SHA-256 preimage), so it keeps nothing.
                let keep: &[u8] = keep.map_or(&[0u8; 32][..], |k| &k[..]);
                let r = sqlx::query(&sql).bind(ms(at)).bind(user.as_str()).bind(keep).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected())
            }

            async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let sql = q("DELETE FROM auth_sessions WHERE revoked_at < $1 OR expires_at < $1");
                let r = sqlx::query(&sql).bind(ms(before)).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected())
            }
        }

        #[async_trait]
        impl KeyStore for $store {
            async fn insert_key(&self, key: &ApiKeyRecord, limit: u32, now: DateTime<Utc>) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                Self::lock_user(&mut tx, &key.user_id).await?;
                let sql = q(&format!("INSERT INTO auth_api_keys ({KEY_COLS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 WHERE (SELECT COUNT(*) FROM auth_api_keys WHERE user_id = $2 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $15)) < $16"));
                let r = bind_key(sqlx::query(&sql), key, encode_key(key)?)
                    .bind(ms(now))
                    .bind(i64::from(limit))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if r.rows_affected() == 0 {
                    return Err(StoreError::KeyLimit { limit });
                }
                tx.commit().await.map_err(backend)?;
                Ok(())
            }

            async fn rotate_key(&self, old: &ApiKeyId, old_expires_at: DateTime<Utc>, new: &ApiKeyRecord) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("UPDATE auth_api_keys SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END WHERE id = $2 AND revoked_at IS NULL");
                let r = sqlx::query(&sql).bind(ms(old_expires_at)).bind(old.as_str()).execute(&mut *tx).await.map_err(backend)?;
                if r.rows_affected() == 0 {
                    return Ok(false);
                }
                let sql = q(&format!("INSERT INTO auth_api_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"));
                bind_key(sqlx::query(&sql), new, encode_key(new)?).execute(&mut *tx).await.map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(true)
            }

            async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
                let sql = q(&format!("SELECT {KEY_COLS} FROM auth_api_keys WHERE hash = $1"));
                let row: Option<KeyRow> = sqlx::query_as(&sql).bind(&hash[..]).fetch_optional(&self.pool).await.map_err(backend)?;
                row.map(decode_key).transpose()
            }

            async fn key_by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
                let sql = q(&format!("SELECT {KEY_COLS} FROM auth_api_keys WHERE id = $1"));
                let row: Option<KeyRow> = sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(&self.pool).await.map_err(backend)?;
                row.map(decode_key).transpose()
            }

            async fn keys_of_user(&self, user: &UserId) -> Result<Vec<ApiKeyRecord>, StoreError> {
                let sql = q(&format!("SELECT {KEY_COLS} FROM auth_api_keys WHERE user_id = $1 ORDER BY created_at, id"));
                let rows: Vec<KeyRow> = sqlx::query_as(&sql).bind(user.as_str()).fetch_all(&self.pool).await.map_err(backend)?;
                rows.into_iter().map(decode_key).collect()
            }

            async fn revoke_key(&self, id: &ApiKeyId, at: DateTime<Utc>) -> Result<bool, StoreError> {
                let sql = q("UPDATE auth_api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL");
                let r = sqlx::query(&sql).bind(ms(at)).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn apply_user_policy(&self, user: &UserId, policy: &KeyPolicy) -> Result<u64, StoreError> {
                let encode = |p: &KeyPolicy| serde_json::to_string(p).map_err(|e| StoreError::Corrupt(e.to_string()));
                let mut tx = self.pool.begin().await.map_err(backend)?;
                // Keys without limits of their own take the plan's policy as it is ...
                let sql = q("UPDATE auth_api_keys SET policy = $1, suspended_at = NULL WHERE user_id = $2 AND revoked_at IS NULL AND own_limits IS NULL");
                let r = sqlx::query(&sql).bind(encode(policy)?).bind(user.as_str()).execute(&mut *tx).await.map_err(backend)?;
                let mut n = r.rows_affected();
                // ... the others keep their narrowing, re-applied to the new policy.
                let sql = q("SELECT id, own_limits FROM auth_api_keys WHERE user_id = $1 AND revoked_at IS NULL AND own_limits IS NOT NULL");
                let rows: Vec<(String, String)> = sqlx::query_as(&sql).bind(user.as_str()).fetch_all(&mut *tx).await.map_err(backend)?;
                let sql = q("UPDATE auth_api_keys SET policy = $1, suspended_at = NULL WHERE id = $2");
                for (id, limits) in rows {
                    let limits: KeyLimits = serde_json::from_str(&limits).map_err(|e| StoreError::Corrupt(format!("key limits: {e}")))?;
                    let r = sqlx::query(&sql).bind(encode(&limits.apply(policy))?).bind(id).execute(&mut *tx).await.map_err(backend)?;
                    n += r.rows_affected();
                }
                tx.commit().await.map_err(backend)?;
                Ok(n)
            }

            async fn set_key_limits(&self, id: &ApiKeyId, limits: Option<&KeyLimits>, policy: &KeyPolicy) -> Result<bool, StoreError> {
                let json = serde_json::to_string(policy).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let sql = q("UPDATE auth_api_keys SET own_limits = $1, policy = $2 WHERE id = $3 AND revoked_at IS NULL");
                let r = sqlx::query(&sql).bind(encode_limits(limits)?).bind(json).bind(id.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected() > 0)
            }

            async fn suspend_user_keys(&self, user: &UserId, at: DateTime<Utc>) -> Result<u64, StoreError> {
                let sql = q("UPDATE auth_api_keys SET suspended_at = COALESCE(suspended_at, $1) WHERE user_id = $2 AND revoked_at IS NULL");
                let r = sqlx::query(&sql).bind(ms(at)).bind(user.as_str()).execute(&self.pool).await.map_err(backend)?;
                Ok(r.rows_affected())
            }

            async fn set_key_limit(&self, user: &UserId, max_keys: u32) -> Result<(), StoreError> {
                let sql = q("INSERT INTO auth_key_limits (user_id, max_keys) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET max_keys = excluded.max_keys");
                sqlx::query(&sql)
                    .bind(user.as_str())
                    .bind(i64::from(max_keys))
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(())
            }

            async fn key_limit(&self, user: &UserId) -> Result<Option<u32>, StoreError> {
                let sql = q("SELECT max_keys FROM auth_key_limits WHERE user_id = $1");
                let row: Option<(i64,)> = sqlx::query_as(&sql)
                    .bind(user.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
                row.map(|(n,)| {
                    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("key limit {n}")))
                })
                .transpose()
            }

            async fn record_key_uses(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
                if uses.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await.map_err(backend)?;
                let sql = q("UPDATE auth_api_keys SET first_used_at = COALESCE(first_used_at, $1), last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $2 ELSE last_used_at END WHERE id = $3");
                for u in uses {
                    sqlx::query(&sql).bind(ms(u.first)).bind(ms(u.last)).bind(u.key_id.as_str()).execute(&mut *tx).await.map_err(backend)?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(())
            }
        }

        fn bind_key<'q>(
            query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            key: &'q ApiKeyRecord,
            (tags, policy, limits): (String, String, Option<String>),
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
            query
                .bind(key.id.as_str())
                .bind(key.user_id.as_str())
                .bind(key.name.as_str())
                .bind(tags)
                .bind(policy)
                .bind(&key.hash[..])
                .bind(key.hint.as_str())
                .bind(ms(key.created_at))
                .bind(opt_ms(key.first_used_at))
                .bind(opt_ms(key.last_used_at))
                .bind(opt_ms(key.expires_at))
                .bind(opt_ms(key.revoked_at))
                .bind(opt_ms(key.suspended_at))
                .bind(limits)
        }

    };
}

pub(crate) use sql_store;
