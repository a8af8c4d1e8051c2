//! Passwords: NFKC normalisation, length rules and argon2id hashing off the async runtime.
//!
//! Passwords are normalised to NFKC before hashing so the same password typed on two
//! keyboards (a precomposed `é` versus `e` + combining accent, a ligature `ﬁ` versus `fi`)
//! hashes the same. Hashing runs in `spawn_blocking` behind a semaphore: argon2id at OWASP
//! parameters costs 19 MiB and tens of milliseconds, and an unbounded number of concurrent
//! logins would otherwise exhaust memory and starve the blocking pool.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OnceCell, Semaphore};
use unicode_normalization::UnicodeNormalization;

use crate::error::AuthError;
use crate::secret::random_bytes;

/// Most bytes a password may have (before and after normalisation).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Fewest characters a new password may have.
pub const MIN_NEW_PASSWORD_CHARS: usize = 8;

/// Why a password is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Nothing was given.
    #[error("password is empty")]
    Empty,
    /// Over [`MAX_PASSWORD_BYTES`].
    #[error("password is longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// A new password shorter than [`MIN_NEW_PASSWORD_CHARS`].
    #[error("password must be at least {MIN_NEW_PASSWORD_CHARS} characters")]
    TooShort,
}

/// A password, NFKC-normalised. Its `Debug` never shows the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password presented at login: normalised, non-empty, at most 1 KiB.
    pub fn new(raw: &str) -> Result<Password, PasswordError> {
        // Check the raw length first so a megabyte of input is never normalised.
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        let normalised: String = raw.nfkc().collect();
        if normalised.is_empty() {
            return Err(PasswordError::Empty);
        }
        if normalised.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        Ok(Password(normalised))
    }

    /// A password being set (registration, reset): also at least 8 characters.
    pub fn new_for_account(raw: &str) -> Result<Password, PasswordError> {
        let p = Password::new(raw)?;
        if p.0.chars().count() < MIN_NEW_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        Ok(p)
    }

    /// The normalised text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl PasswordParams {
    /// OWASP's recommendation: m = 19 MiB, t = 2, p = 1.
    pub const OWASP: PasswordParams = PasswordParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Deliberately weak parameters so test suites run fast. Never use in production.
    pub const INSECURE_FOR_TESTS: PasswordParams = PasswordParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
}

impl Default for PasswordParams {
    fn default() -> Self {
        PasswordParams::OWASP
    }
}

/// Hashes and verifies passwords with argon2id on the blocking pool, at most
/// `max_parallel` at a time.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// A hasher with `params`, running at most `max_parallel` hashes at once.
    pub fn new(params: PasswordParams, max_parallel: usize) -> Result<Self, AuthError> {
        let p = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|e| AuthError::Unavailable(format!("invalid argon2 parameters: {e}")))?;
        Ok(Self {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, p),
            permits: Arc::new(Semaphore::new(max_parallel.max(1))),
            dummy: Arc::new(OnceCell::new()),
        })
    }

    /// OWASP parameters, parallelism bounded by the number of CPUs.
    pub fn owasp() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        // OWASP parameters are valid argon2 parameters, so this cannot fail.
        Self::new(PasswordParams::OWASP, cpus).unwrap_or_else(|_| unreachable_params())
    }

    /// Hash `password` into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
    pub async fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let argon = self.argon.clone();
        let pw = password.clone();
        let salt_bytes = random_bytes::<16>();
        self.run(move || {
            let salt = SaltString::encode_b64(&salt_bytes)
                .map_err(|e| AuthError::Unavailable(format!("salt: {e}")))?;
            argon
                .hash_password(pw.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AuthError::Unavailable(format!("hashing failed: {e}")))
        })
        .await
    }

    /// Does `password` match the PHC string `hash`? A malformed hash is `false`.
    pub async fn verify(&self, password: &Password, hash: &str) -> Result<bool, AuthError> {
        let argon = self.argon.clone();
        let pw = password.clone();
        let hash = hash.to_owned();
        self.run(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Ok(false);
            };
            Ok(argon
                .verify_password(pw.expose().as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    /// Spend the same work as a real verification, for callers that must not reveal
    /// whether an account exists.
    pub async fn dummy_verify(&self, password: &Password) -> Result<(), AuthError> {
        let dummy = self
            .dummy
            .get_or_try_init(|| async {
                let random = crate::secret::b64(&random_bytes::<24>());
                self.hash(&Password(random)).await
            })
            .await?
            .clone();
        self.verify(password, &dummy).await.map(|_| ())
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Unavailable("password hasher closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AuthError::Unavailable(format!("hashing task failed: {e}")))?
    }
}

#[cold]
fn unreachable_params() -> PasswordHasher {
    // Params::DEFAULT is always valid; only reached if the OWASP constants were edited wrongly.
    PasswordHasher {
        argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT),
        permits: Arc::new(Semaphore::new(1)),
        dummy: Arc::new(OnceCell::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_rules() {
        assert_eq!(Password::new(""), Err(PasswordError::Empty));
        assert_eq!(
            Password::new(&"a".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        );
        assert!(Password::new(&"a".repeat(MAX_PASSWORD_BYTES)).is_ok());
        // 1024 bytes of input whose NFKC form grows past 1 KiB: U+FDFA expands to 18 chars.
        let growing = "\u{FDFA}".repeat(MAX_PASSWORD_BYTES / 3);
        assert!(growing.len() <= MAX_PASSWORD_BYTES);
        assert_eq!(Password::new(&growing), Err(PasswordError::TooLong));
        assert_eq!(
            Password::new_for_account("short"),
            Err(PasswordError::TooShort)
        );
        assert!(
            Password::new("short").is_ok(),
            "login does not impose a minimum"
        );
        assert_eq!(
            format!("{:?}", Password::new("secret").unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn nfkc_normalisation() {
        let composed = Password::new("caf\u{e9}-pass").unwrap();
        let decomposed = Password::new("cafe\u{301}-pass").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(
            Password::new("\u{FB01}sh").unwrap().expose(),
            "fish",
            "ligature folds"
        );
        assert_eq!(
            Password::new("\u{FF21}").unwrap().expose(),
            "A",
            "fullwidth folds"
        );
    }

    #[tokio::test]
    async fn owasp_parameters_are_used_and_verify() {
        let hasher = PasswordHasher::owasp();
        let pw = Password::new_for_account("correct horse").unwrap();
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher.verify(&pw, &hash).await.unwrap());
        let wrong = Password::new("correct horsE").unwrap();
        assert!(!hasher.verify(&wrong, &hash).await.unwrap());
        assert!(!hasher.verify(&pw, "not a phc string").await.unwrap());
    }
}
