//! Two-factor authentication with TOTP (RFC 6238) and recovery codes.
//!
//! SHA-1, 6 digits, 30-second steps: what every common authenticator app uses. A code is
//! accepted for the current step or one step either side (clock drift), and an accepted
//! step is recorded atomically in the store, so the same code (or an older one) never
//! works twice, even when two requests race. Secrets are sealed with AES-256-GCM, bound to
//! their user id. Recovery codes are single-use and stored as SHA-256 hashes.

use relay_core::UserId;
use totp_rs::{Algorithm, TOTP};

use crate::accounts::AccountService;
use crate::error::AuthError;
use crate::model::TotpRecord;
use crate::secret::{ct_eq, random_bytes, sha256, SecretBox};

const DIGITS: usize = 6;
const STEP_SECS: u64 = 30;
const RECOVERY_CODES: usize = 10;

/// What enrolment shows the user once.
#[derive(Clone)]
pub struct TotpEnrolment {
    /// `otpauth://totp/...` for a QR code.
    pub otpauth_uri: String,
    /// The secret in base32, for typing in by hand.
    pub secret_base32: String,
    /// Single-use recovery codes.
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(***)")
    }
}

fn totp_for(secret: Vec<u8>, issuer: &str, account: &str) -> Result<TOTP, AuthError> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret,
        Some(issuer.to_owned()),
        account.to_owned(),
    )
    .map_err(|e| AuthError::Unavailable(format!("TOTP setup: {e}")))
}

/// Recovery codes are compared without dashes, spaces or case.
fn normalise_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn new_recovery_code() -> String {
    let hex = hex::encode(random_bytes::<6>());
    format!("{}-{}-{}", &hex[0..4], &hex[4..8], &hex[8..12])
}

impl AccountService {
    /// Whether TOTP can be used here (a key to seal secrets was configured with
    /// [`with_totp`](Self::with_totp)).
    pub fn totp_available(&self) -> bool {
        self.totp_box.is_some()
    }

    fn secret_box(&self) -> Result<&SecretBox, AuthError> {
        self.totp_box
            .as_ref()
            .ok_or_else(|| AuthError::Unavailable("TOTP is not configured".into()))
    }

    pub(crate) async fn totp_enabled(&self, user: &UserId) -> Result<bool, AuthError> {
        Ok(self
            .store
            .totp(user)
            .await?
            .is_some_and(|t| t.enabled_at.is_some()))
    }

    /// Start enrolment: a new secret (pending until [`confirm_totp`](Self::confirm_totp))
    /// and new recovery codes, replacing any pending enrolment.
    pub async fn enrol_totp(&self, user: &UserId) -> Result<TotpEnrolment, AuthError> {
        let sb = self.secret_box()?;
        let u = self.user(user).await?;
        if self.totp_enabled(user).await? {
            return Err(AuthError::TotpAlreadyEnabled);
        }
        let secret = random_bytes::<20>().to_vec();
        let totp = totp_for(secret.clone(), &self.config.totp_issuer, u.email.as_str())?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<[u8; 32]> = codes
            .iter()
            .map(|c| sha256(&normalise_recovery(c)))
            .collect();
        let record = TotpRecord {
            sealed_secret: sb.seal(&secret, user.as_str().as_bytes())?,
            enabled_at: None,
            last_step: None,
        };
        self.store.set_totp(user, Some(&record), &hashes).await?;
        Ok(TotpEnrolment {
            otpauth_uri: totp.get_url(),
            secret_base32: totp.get_secret_base32(),
            recovery_codes: codes,
        })
    }

    /// Finish enrolment with a code from the app.
    pub async fn confirm_totp(&self, user: &UserId, code: &str) -> Result<(), AuthError> {
        let record = self
            .store
            .totp(user)
            .await?
            .ok_or(AuthError::TotpNotEnrolled)?;
        if record.enabled_at.is_some() {
            return Err(AuthError::TotpAlreadyEnabled);
        }
        self.check_totp_code(user, &record, code).await?;
        self.store.enable_totp(user, self.clock.now()).await?;
        Ok(())
    }

    /// Turn TOTP off; needs a current code (or a recovery code).
    pub async fn disable_totp(&self, user: &UserId, code: &str) -> Result<(), AuthError> {
        if !self.totp_enabled(user).await? {
            return Err(AuthError::TotpNotEnrolled);
        }
        self.verify_second_factor(user, code).await?;
        self.store.set_totp(user, None, &[]).await?;
        Ok(())
    }

    /// Check a TOTP code or recovery code of a user with TOTP enabled; throttled per
    /// account. Each code works once.
    pub async fn verify_second_factor(&self, user: &UserId, code: &str) -> Result<(), AuthError> {
        if let Some(a) = &self.attempts {
            a.check("totp", &format!("acct:{user}"), a.limits.totp_per_account)
                .await?;
        }
        let record = self
            .store
            .totp(user)
            .await?
            .ok_or(AuthError::TotpNotEnrolled)?;
        let code = code.trim();
        if code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit()) {
            self.check_totp_code(user, &record, code).await?;
        } else {
            let normalised = normalise_recovery(code);
            if normalised.is_empty() || normalised.len() > 64 {
                return Err(AuthError::InvalidTotp);
            }
            if !self
                .store
                .use_recovery_code(user, &sha256(&normalised))
                .await?
            {
                return Err(AuthError::InvalidTotp);
            }
        }
        if let Some(a) = &self.attempts {
            a.reset("totp", &format!("acct:{user}")).await;
        }
        Ok(())
    }

    async fn check_totp_code(
        &self,
        user: &UserId,
        record: &TotpRecord,
        code: &str,
    ) -> Result<(), AuthError> {
        let sb = self.secret_box()?;
        let secret = sb.open(&record.sealed_secret, user.as_str().as_bytes())?;
        // Account name only matters for the URI; any valid one will do here.
        let totp = totp_for(secret, &self.config.totp_issuer, "user")?;
        let now = u64::try_from(self.clock.now().timestamp()).unwrap_or(0);
        let current = now / STEP_SECS;
        let matched = [current.saturating_sub(1), current, current + 1]
            .into_iter()
            .find(|step| ct_eq(totp.generate(step * STEP_SECS).as_bytes(), code.as_bytes()));
        let Some(step) = matched else {
            return Err(AuthError::InvalidTotp);
        };
        let step = i64::try_from(step).map_err(|_| AuthError::InvalidTotp)?;
        // The atomic "later than the last accepted step" is what stops replay.
        if self.store.use_totp_step(user, step).await? {
            Ok(())
        } else {
            Err(AuthError::InvalidTotp)
        }
    }
}

/// The code an authenticator app shows for `secret_base32` at `unix_secs` (for tests and
/// tooling).
pub fn code_at(secret_base32: &str, unix_secs: u64) -> Result<String, AuthError> {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_owned())
        .to_bytes()
        .map_err(|e| AuthError::Unavailable(format!("bad TOTP secret: {e:?}")))?;
    Ok(totp_for(secret, "relay", "user")?.generate(unix_secs))
}
