//! Accounts: registration, email verification, password reset, login, roles and status.
//!
//! Registration and reset requests answer every well-formed request with the same value
//! ([`Registered`], [`ResetRequested`]) and do the same expensive work (one argon2id hash)
//! whether or not the address is known, so neither the answer nor its timing tells an
//! attacker which addresses have accounts. Login answers an unknown address and a wrong
//! password with the same [`AuthError::InvalidCredentials`], after the same work (a
//! verification against a dummy hash). What still differs between the two paths is one
//! small store write (the verification or reset token) on the known-address path; the
//! expensive, attacker-measurable part (argon2id) is the same on both.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::Duration;
use relay_core::{AccountStatus, SharedClock, Throttle, UserId};

use crate::email::Email;
use crate::error::AuthError;
use crate::keys::ApiKeyService;
use crate::model::{OneTimeToken, StatusChange, TokenPurpose, User, UserSource};
use crate::notify::{Notice, Notifier};
use crate::password::{Password, PasswordHasher};
use crate::role::{Permission, Role};
use crate::secret::{new_token, sha256, SecretBox};
use crate::session::IssuedSession;
use crate::store::{transition_allowed, AuthStore, StoreError};
use crate::throttle::{AttemptLimits, Attempts};

/// Lifetimes and policies of account flows.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// How long an email verification token works.
    pub verification_ttl: Duration,
    /// How long a password reset token works.
    pub reset_ttl: Duration,
    /// How long a session lasts (absolute, from login).
    pub session_ttl: Duration,
    /// Refuse logins until the email address is verified.
    pub require_verified_email: bool,
    /// Issuer shown in authenticator apps.
    pub totp_issuer: String,
}

impl Default for AccountConfig {
    fn default() -> Self {
        Self {
            verification_ttl: Duration::hours(24),
            reset_ttl: Duration::hours(1),
            session_ttl: Duration::days(7),
            require_verified_email: false,
            totp_issuer: "relay".into(),
        }
    }
}

/// The answer to every well-formed registration (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered;

/// The answer to every well-formed reset request (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetRequested;

/// A login attempt.
#[derive(Debug, Clone, Copy)]
pub struct LoginRequest<'a> {
    /// Email address as typed.
    pub email: &'a str,
    /// Password as typed.
    pub password: &'a str,
    /// TOTP code or recovery code, when the account has two-factor authentication.
    pub second_factor: Option<&'a str>,
    /// The client's IP, for per-IP throttling.
    pub ip: Option<IpAddr>,
}

/// Accounts and sessions. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AccountService {
    pub(crate) store: Arc<dyn AuthStore>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) clock: SharedClock,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) attempts: Option<Attempts>,
    pub(crate) totp_box: Option<SecretBox>,
    pub(crate) keys: Option<Arc<ApiKeyService>>,
    #[cfg(feature = "ldap")]
    pub(crate) ldap: Option<Arc<crate::ldap::LdapDirectory>>,
    pub(crate) config: AccountConfig,
}

impl AccountService {
    /// Accounts on `store`, telling users through `notifier`, with OWASP argon2id
    /// parameters and no throttling, TOTP or LDAP until configured.
    pub fn new(store: Arc<dyn AuthStore>, notifier: Arc<dyn Notifier>, clock: SharedClock) -> Self {
        Self {
            store,
            hasher: PasswordHasher::owasp(),
            clock,
            notifier,
            attempts: None,
            totp_box: None,
            keys: None,
            #[cfg(feature = "ldap")]
            ldap: None,
            config: AccountConfig::default(),
        }
    }

    /// Use another password hasher (for example weaker parameters in tests).
    pub fn with_hasher(mut self, hasher: PasswordHasher) -> Self {
        self.hasher = hasher;
        self
    }

    /// Throttle attempts through `throttle` with `limits`.
    pub fn with_throttle(mut self, throttle: Arc<dyn Throttle>, limits: AttemptLimits) -> Self {
        self.attempts = Some(Attempts::new(throttle, limits));
        self
    }

    /// Enable TOTP, sealing secrets with `secret_box`.
    pub fn with_totp(mut self, secret_box: SecretBox) -> Self {
        self.totp_box = Some(secret_box);
        self
    }

    /// Invalidate cached API keys of a user whose status changes.
    pub fn with_key_service(mut self, keys: Arc<ApiKeyService>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Accept logins from an LDAP directory next to local accounts.
    #[cfg(feature = "ldap")]
    pub fn with_ldap(mut self, directory: crate::ldap::LdapDirectory) -> Self {
        self.ldap = Some(Arc::new(directory));
        self
    }

    /// Replace the configuration.
    pub fn with_config(mut self, config: AccountConfig) -> Self {
        self.config = config;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.store
    }

    /// Register `email` with `password`. Answers [`Registered`] whether or not the address
    /// was already taken (see the module docs); its owner gets a verification link or a
    /// note that someone tried again. Bad input is an error and changes nothing.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<Registered, AuthError> {
        let email = Email::parse(email)?;
        let password = Password::new_for_account(password)?;
        if let Some(a) = &self.attempts {
            a.check_ip("register", ip, a.limits.register_per_ip).await?;
            a.check(
                "register",
                &format!("email:{email}"),
                a.limits.register_per_email,
            )
            .await?;
        }
        // Hash before looking at the store: the same work on both paths.
        let hash = self.hasher.hash(&password).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email: email.clone(),
            password_hash: Some(hash),
            role: Role::User,
            status: AccountStatus::Active,
            source: UserSource::Local,
            email_verified_at: None,
            created_at: now,
            display_name: None,
        };
        match self.store.insert_user(&user).await {
            Ok(()) => {
                let token = self
                    .issue_token(&user.id, TokenPurpose::VerifyEmail)
                    .await?;
                self.notifier
                    .notify(&email, Notice::VerifyEmail { token })
                    .await;
            }
            Err(StoreError::Conflict(_)) => {
                self.notifier
                    .notify(&email, Notice::AlreadyRegistered)
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Registered)
    }

    /// Confirm an email address with the token from the verification notice.
    /// An email-change token (sent to the new address) is accepted here too: it moves the
    /// account to the new address.
    pub async fn verify_email(&self, token: &str) -> Result<UserId, AuthError> {
        let user = match self.consume_token(token, TokenPurpose::VerifyEmail).await {
            Err(AuthError::Token(crate::error::TokenError::Unknown)) => {
                return self.confirm_email_change(token).await;
            }
            other => other?,
        };
        self.store
            .set_email_verified(&user, self.clock.now())
            .await?;
        Ok(user)
    }

    /// Send a fresh verification notice to an unverified address (silently nothing
    /// otherwise, with the same answer).
    pub async fn resend_verification(&self, email: &str) -> Result<ResetRequested, AuthError> {
        let email = Email::parse(email)?;
        if let Some(user) = self.store.user_by_email(&email).await? {
            if user.email_verified_at.is_none() {
                let token = self
                    .issue_token(&user.id, TokenPurpose::VerifyEmail)
                    .await?;
                self.notifier
                    .notify(&email, Notice::VerifyEmail { token })
                    .await;
            }
        }
        Ok(ResetRequested)
    }

    /// Ask for a password reset. Answers [`ResetRequested`] whether or not the address is
    /// known; only a known, local account gets a reset notice.
    pub async fn request_password_reset(
        &self,
        email: &str,
        ip: Option<IpAddr>,
    ) -> Result<ResetRequested, AuthError> {
        let email = Email::parse(email)?;
        if let Some(a) = &self.attempts {
            a.check_ip("reset", ip, a.limits.reset_per_ip).await?;
            a.check(
                "reset",
                &format!("email:{email}"),
                a.limits.reset_per_account,
            )
            .await?;
        }
        match self.store.user_by_email(&email).await? {
            Some(user) if user.source == UserSource::Local => {
                let token = self
                    .issue_token(&user.id, TokenPurpose::ResetPassword)
                    .await?;
                self.notifier
                    .notify(&email, Notice::PasswordReset { token })
                    .await;
            }
            // Unknown or directory-managed: same answer, and comparable work (a token is
            // generated and hashed either way; no store write an observer could time).
            _ => {
                let _ = sha256(&new_token(""));
            }
        }
        Ok(ResetRequested)
    }

    /// Set a new password with a reset token. Ends every session of the user.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
    ) -> Result<UserId, AuthError> {
        // Validate before consuming, so a bad password does not burn the token.
        let password = Password::new_for_account(new_password)?;
        let user = self
            .consume_token(token, TokenPurpose::ResetPassword)
            .await?;
        let hash = self.hasher.hash(&password).await?;
        self.store.set_password_hash(&user, &hash).await?;
        // Whoever holds the mailbox proved ownership; the reset also verifies the address.
        self.store
            .set_email_verified(&user, self.clock.now())
            .await?;
        self.store
            .revoke_user_sessions(&user, None, self.clock.now())
            .await?;
        Ok(user)
    }

    /// Change the password of a logged-in user (current password required); ends every
    /// other session.
    pub async fn change_password(
        &self,
        user: &UserId,
        current_session: &[u8; 32],
        current: &str,
        new_password: &str,
    ) -> Result<(), AuthError> {
        let current = Password::new(current)?;
        let new_password = Password::new_for_account(new_password)?;
        let u = self
            .store
            .user_by_id(user)
            .await?
            .ok_or(AuthError::NotFound("user"))?;
        let Some(hash) = u.password_hash.as_deref() else {
            return Err(AuthError::InvalidCredentials);
        };
        if !self.hasher.verify(&current, hash).await? {
            return Err(AuthError::InvalidCredentials);
        }
        let hash = self.hasher.hash(&new_password).await?;
        self.store.set_password_hash(user, &hash).await?;
        self.store
            .revoke_user_sessions(user, Some(current_session), self.clock.now())
            .await?;
        Ok(())
    }

    /// Log in with email and password (and second factor, when enabled). Returns a new
    /// session; its token is shown once.
    pub async fn login(&self, req: LoginRequest<'_>) -> Result<IssuedSession, AuthError> {
        let email = Email::parse(req.email)?;
        let password = Password::new(req.password)?;
        let account_key = format!("acct:{email}");
        if let Some(a) = &self.attempts {
            a.check_ip("login", req.ip, a.limits.login_per_ip).await?;
            a.check("login", &account_key, a.limits.login_per_account)
                .await?;
        }
        let user = self.check_password(&email, &password).await?;
        if !matches!(user.status, AccountStatus::Active | AccountStatus::PastDue) {
            return Err(AuthError::AccountDisabled(user.status));
        }
        if self.config.require_verified_email && user.email_verified_at.is_none() {
            return Err(AuthError::EmailNotVerified);
        }
        if self.totp_enabled(&user.id).await? {
            let code = req.second_factor.ok_or(AuthError::TotpRequired)?;
            self.verify_second_factor(&user.id, code).await?;
        }
        if let Some(a) = &self.attempts {
            a.reset("login", &account_key).await;
        }
        self.create_session(&user.id).await
    }

    /// The user whose password this is, or `InvalidCredentials` after the same work.
    async fn check_password(&self, email: &Email, password: &Password) -> Result<User, AuthError> {
        let user = self.store.user_by_email(email).await?;
        if let Some(u) = &user {
            if let (UserSource::Local, Some(hash)) = (u.source, u.password_hash.as_deref()) {
                return if self.hasher.verify(password, hash).await? {
                    Ok(u.clone())
                } else {
                    Err(AuthError::InvalidCredentials)
                };
            }
        }
        #[cfg(feature = "ldap")]
        if let Some(dir) = &self.ldap {
            return match dir.authenticate(email, password).await? {
                Some(identity) => self.upsert_directory_user(identity).await,
                None => Err(AuthError::InvalidCredentials),
            };
        }
        self.hasher.dummy_verify(password).await?;
        Err(AuthError::InvalidCredentials)
    }

    /// Create or update the local profile of a directory user after a successful bind.
    #[cfg(feature = "ldap")]
    async fn upsert_directory_user(
        &self,
        identity: crate::ldap::DirectoryIdentity,
    ) -> Result<User, AuthError> {
        for _ in 0..2 {
            if let Some(mut u) = self.store.user_by_email(&identity.email).await? {
                if u.role != identity.role {
                    self.store.set_role(&u.id, identity.role).await?;
                    u.role = identity.role;
                }
                return Ok(u);
            }
            let now = self.clock.now();
            let user = User {
                id: UserId::new(),
                email: identity.email.clone(),
                password_hash: None,
                role: identity.role,
                status: AccountStatus::Active,
                source: UserSource::Ldap,
                email_verified_at: Some(now),
                created_at: now,
                display_name: None,
            };
            match self.store.insert_user(&user).await {
                Ok(()) => return Ok(user),
                // A concurrent first login of the same person created it: read it back.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Unavailable(
            "could not create directory user".into(),
        ))
    }

    /// A user by id.
    pub async fn user(&self, id: &UserId) -> Result<User, AuthError> {
        self.store
            .user_by_id(id)
            .await?
            .ok_or(AuthError::NotFound("user"))
    }

    /// Change `user`'s status, recording who did it and why. `actor` is `None` for the
    /// system (billing) and otherwise needs [`Permission::ManageUsers`]. Leaving `Active`
    /// for suspended, frozen or closed ends the user's sessions; cached API keys of the
    /// user are invalidated either way.
    pub async fn set_status(
        &self,
        actor: Option<&User>,
        user: &UserId,
        to: AccountStatus,
        reason: &str,
    ) -> Result<StatusChange, AuthError> {
        if let Some(a) = actor {
            a.role.require(Permission::ManageUsers)?;
        }
        let current = self.user(user).await?;
        if !transition_allowed(current.status, to) {
            return Err(AuthError::InvalidStatusTransition {
                from: current.status,
                to,
            });
        }
        let change = StatusChange {
            user_id: user.clone(),
            from: current.status,
            to,
            actor: actor.map(|a| a.id.clone()),
            reason: reason.chars().take(500).collect(),
            at: self.clock.now(),
        };
        if !self.store.transition_status(&change).await? {
            // Someone else changed it in between; report against the fresh state.
            let now = self.user(user).await?.status;
            return Err(AuthError::InvalidStatusTransition { from: now, to });
        }
        if matches!(
            to,
            AccountStatus::Suspended | AccountStatus::Frozen | AccountStatus::Closed
        ) {
            self.store
                .revoke_user_sessions(user, None, change.at)
                .await?;
        }
        if let Some(keys) = &self.keys {
            keys.invalidate_user(user);
        }
        Ok(change)
    }

    /// Change `user`'s role; `actor` needs [`Permission::ManageRoles`].
    pub async fn set_role(&self, actor: &User, user: &UserId, role: Role) -> Result<(), AuthError> {
        actor.role.require(Permission::ManageRoles)?;
        if self.store.set_role(user, role).await? {
            Ok(())
        } else {
            Err(AuthError::NotFound("user"))
        }
    }

    /// Create an account directly (admin tooling, seeding): no notice is sent and the
    /// address counts as verified. A taken address is [`StoreError::Conflict`].
    pub async fn create_user(
        &self,
        email: &str,
        password: &str,
        role: Role,
    ) -> Result<User, AuthError> {
        let email = Email::parse(email)?;
        let password = Password::new_for_account(password)?;
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email,
            password_hash: Some(self.hasher.hash(&password).await?),
            role,
            status: AccountStatus::Active,
            source: UserSource::Local,
            email_verified_at: Some(now),
            created_at: now,
            display_name: None,
        };
        self.store.insert_user(&user).await?;
        Ok(user)
    }

    async fn issue_token(&self, user: &UserId, purpose: TokenPurpose) -> Result<String, AuthError> {
        let token = new_token("");
        let now = self.clock.now();
        let ttl = match purpose {
            TokenPurpose::VerifyEmail | TokenPurpose::ChangeEmail => self.config.verification_ttl,
            TokenPurpose::ResetPassword => self.config.reset_ttl,
        };
        self.store
            .insert_token(&OneTimeToken {
                hash: sha256(&token),
                user_id: user.clone(),
                purpose,
                created_at: now,
                expires_at: now + ttl,
            })
            .await?;
        Ok(token)
    }

    async fn consume_token(&self, token: &str, purpose: TokenPurpose) -> Result<UserId, AuthError> {
        // Anything longer than a token cannot be one; don't hash megabytes.
        if token.is_empty() || token.len() > 128 {
            return Err(crate::error::TokenError::Unknown.into());
        }
        Ok(self
            .store
            .consume_token(&sha256(token.trim()), purpose, self.clock.now())
            .await??)
    }
}
