//! Profile changes, erasure, housekeeping and admin listing on [`AccountService`].
//!
//! - The display name is validated here (1 to 100 printable characters; empty clears it).
//! - An email change is confirmed from the new mailbox: a token goes to the new address
//!   and the account moves only when it is used (through the same verification endpoint as
//!   a registration). A taken address gets the "already registered" notice instead, so the
//!   answer never tells the requester whether an address has an account.
//! - Erasure ([`AccountService::erase`]) removes personal data for good and keeps the user
//!   id, which is what billing records name.
//! - Risk flags are named markers with a reason that admins set; relay-auth only stores
//!   and lists them (the server decides what a flag does).

use chrono::Duration;
use relay_core::UserId;

use crate::accounts::{AccountService, ResetRequested};
use crate::email::Email;
use crate::error::{AuthError, TokenError};
use crate::model::{OneTimeToken, Purged, RiskFlag, StatusChange, TokenPurpose, User, UserFilter};
use crate::notify::Notice;
use crate::password::Password;
use crate::role::Permission;
use crate::secret::{new_token, sha256};
use crate::store::StoreError;

/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;

/// The address an erased account keeps: unique per user, identifies no one, and cannot
/// receive mail (`.invalid` is reserved, RFC 2606).
pub fn erased_email(id: &UserId) -> Email {
    Email::parse(&format!("deleted+{id}@erased.invalid"))
        .unwrap_or_else(|_| unreachable!("a user id is letters, digits and `_`"))
}

/// A display name as stored: trimmed, `None` when empty; an error names what is wrong.
pub fn display_name(raw: &str) -> Result<Option<String>, AuthError> {
    let name = raw.trim();
    let bad = |reason: &str| AuthError::InvalidInput {
        field: "display_name",
        reason: reason.to_owned(),
    };
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(bad("a display name is at most 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("a display name may not contain control characters"));
    }
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

/// A risk flag's name: 1 to 32 of `a-z 0-9 _ -`.
pub fn valid_flag_name(flag: &str) -> bool {
    (1..=32).contains(&flag.len())
        && flag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl AccountService {
    /// Set (or with an empty name, clear) the user's display name.
    pub async fn set_display_name(
        &self,
        user: &UserId,
        raw: &str,
    ) -> Result<Option<String>, AuthError> {
        let name = display_name(raw)?;
        if !self.store.set_display_name(user, name.as_deref()).await? {
            return Err(AuthError::NotFound("user"));
        }
        Ok(name)
    }

    /// Ask to move `user` to `new_email` (current password required). Answers the same
    /// whether or not the address is taken; only its owner learns which (see the module
    /// docs). Bad input is an error and changes nothing.
    pub async fn request_email_change(
        &self,
        user: &UserId,
        current_password: &str,
        new_email: &str,
    ) -> Result<ResetRequested, AuthError> {
        let email = Email::parse(new_email)?;
        let current = Password::new(current_password)?;
        let u = self.user(user).await?;
        let Some(hash) = u.password_hash.as_deref() else {
            // Directory accounts take their address from the directory.
            return Err(AuthError::InvalidInput {
                field: "email",
                reason: "this account's address is managed by the directory".into(),
            });
        };
        if !self.hasher.verify(&current, hash).await? {
            return Err(AuthError::InvalidCredentials);
        }
        if email == u.email {
            return Err(AuthError::InvalidInput {
                field: "email",
                reason: "that is already the account's address".into(),
            });
        }
        if self.store.user_by_email(&email).await?.is_some() {
            self.notifier
                .notify(&email, Notice::AlreadyRegistered)
                .await;
            return Ok(ResetRequested);
        }
        let token = new_token("");
        let now = self.clock.now();
        self.store
            .insert_email_change(
                &OneTimeToken {
                    hash: sha256(&token),
                    user_id: user.clone(),
                    purpose: TokenPurpose::ChangeEmail,
                    created_at: now,
                    expires_at: now + self.config.verification_ttl,
                },
                &email,
            )
            .await?;
        self.notifier
            .notify(&email, Notice::VerifyEmail { token })
            .await;
        Ok(ResetRequested)
    }

    /// Use an email-change token (called by [`AccountService::verify_email`] for tokens
    /// that are not registration tokens).
    pub(crate) async fn confirm_email_change(&self, token: &str) -> Result<UserId, AuthError> {
        if token.is_empty() || token.len() > 128 {
            return Err(TokenError::Unknown.into());
        }
        match self
            .store
            .confirm_email_change(&sha256(token.trim()), self.clock.now())
            .await
        {
            Ok(Ok((user, _))) => {
                if let Some(keys) = &self.keys {
                    keys.invalidate_user(&user);
                }
                Ok(user)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(StoreError::Conflict(_)) => Err(AuthError::InvalidInput {
                field: "token",
                reason: "the new address has been taken by another account since".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Erase `user`'s personal data and close the account for good (see
    /// [`crate::UserStore::erase_user`]); their API keys stop working everywhere. The
    /// address is free to register again as a new account.
    pub async fn erase(
        &self,
        user: &UserId,
        actor: Option<&UserId>,
        reason: &str,
    ) -> Result<StatusChange, AuthError> {
        let reason: String = reason.chars().take(500).collect();
        let change = self
            .store
            .erase_user(user, &erased_email(user), actor, &reason, self.clock.now())
            .await?
            .ok_or(AuthError::NotFound("user"))?;
        if let Some(keys) = &self.keys {
            keys.invalidate_user(user);
        }
        Ok(change)
    }

    /// Delete tokens and sessions that ended more than `retention` ago.
    pub async fn purge(&self, retention: Duration) -> Result<Purged, AuthError> {
        let before = self.clock.now() - retention.max(Duration::zero());
        Ok(Purged {
            tokens: self.store.purge_tokens(before).await?,
            sessions: self.store.purge_sessions(before).await?,
        })
    }

    /// Users matching `filter`, newest first; `actor` needs [`Permission::ManageUsers`].
    pub async fn list_users(
        &self,
        actor: &User,
        filter: &UserFilter,
    ) -> Result<Vec<User>, AuthError> {
        actor.role.require(Permission::ManageUsers)?;
        Ok(self.store.list_users(filter).await?)
    }

    /// Set risk flag `flag` on `user` with `reason`; `actor` needs
    /// [`Permission::ManageUsers`].
    pub async fn set_risk_flag(
        &self,
        actor: &User,
        user: &UserId,
        flag: &str,
        reason: &str,
    ) -> Result<RiskFlag, AuthError> {
        actor.role.require(Permission::ManageUsers)?;
        if !valid_flag_name(flag) {
            return Err(AuthError::InvalidInput {
                field: "flag",
                reason: "a flag is 1 to 32 characters of a-z, 0-9, _ or -".into(),
            });
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(AuthError::InvalidInput {
                field: "reason",
                reason: "give a reason of 1 to 500 characters".into(),
            });
        }
        let record = RiskFlag {
            flag: flag.to_owned(),
            reason: reason.to_owned(),
            actor: Some(actor.id.clone()),
            set_at: self.clock.now(),
        };
        if !self.store.set_risk_flag(user, &record).await? {
            return Err(AuthError::NotFound("user"));
        }
        Ok(record)
    }

    /// Clear risk flag `flag` of `user`; false when it was not set.
    pub async fn clear_risk_flag(
        &self,
        actor: &User,
        user: &UserId,
        flag: &str,
    ) -> Result<bool, AuthError> {
        actor.role.require(Permission::ManageUsers)?;
        Ok(self.store.clear_risk_flag(user, flag).await?)
    }

    /// The user's risk flags.
    pub async fn risk_flags(&self, user: &UserId) -> Result<Vec<RiskFlag>, AuthError> {
        Ok(self.store.risk_flags(user).await?)
    }
}
