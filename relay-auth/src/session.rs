//! Login sessions: opaque server-side tokens.
//!
//! **Why opaque tokens and not signed ones (JWT).** A session token here is 32 random bytes;
//! the server stores only its SHA-256 with the owner, expiry and revocation time. Every
//! check reads the store, which is exactly what makes logout, "log out everywhere", a
//! password reset and an admin suspension take effect on the next request. Signed tokens
//! would save that read but need a revocation list consulted on every request anyway (or
//! accept that a logged-out token keeps working until it expires), plus key rotation. The
//! session endpoints are the user/admin REST API, not the gateway hot path, so one indexed
//! read per request costs nothing that matters. A database leak does not leak sessions:
//! only hashes are stored.
//!
//! **Two ways to present a session.**
//! - As a bearer token (`Authorization: Bearer rs_...`), for scripts and SPAs that keep the
//!   token themselves. Browsers never attach it on their own, so no CSRF check is needed.
//! - As a cookie ([`IssuedSession::cookie`]: `HttpOnly; Secure; SameSite=Strict`). Cookies
//!   ride along on cross-site requests, so unsafe methods (anything but GET, HEAD, OPTIONS)
//!   must also carry the session's CSRF token in the `x-csrf-token` header. The CSRF token
//!   is returned at login (and in a readable `relay_csrf` cookie); a page on another origin
//!   can neither read it nor set custom headers without a CORS preflight. `SameSite=Strict`
//!   is a second, independent defence. The CSRF token is random per session and stored as
//!   a hash, and compared in constant time.

use chrono::{DateTime, Utc};
use http::Method;
use relay_core::UserId;

use crate::accounts::AccountService;
use crate::error::AuthError;
use crate::model::{SessionRecord, User};
use crate::secret::{ct_eq, new_token, sha256};

/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "rs_";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "relay_session";
/// Name of the (script-readable) CSRF cookie.
pub const CSRF_COOKIE: &str = "relay_csrf";
/// Header that must carry the CSRF token on unsafe cookie-authenticated requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A new session. The tokens are shown once and stored only as hashes.
#[derive(Clone)]
pub struct IssuedSession {
    /// The session token.
    pub token: String,
    /// The CSRF token for cookie use.
    pub csrf_token: String,
    /// Whose session.
    pub user_id: UserId,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSession")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl IssuedSession {
    /// `Set-Cookie` value for the session cookie, valid until the session ends.
    pub fn cookie(&self, now: DateTime<Utc>) -> String {
        format!(
            "{SESSION_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            self.token,
            (self.expires_at - now).num_seconds().max(0)
        )
    }

    /// `Set-Cookie` value for the CSRF cookie (readable by the page's own scripts).
    pub fn csrf_cookie(&self, now: DateTime<Utc>) -> String {
        format!(
            "{CSRF_COOKIE}={}; Path=/; Max-Age={}; Secure; SameSite=Strict",
            self.csrf_token,
            (self.expires_at - now).num_seconds().max(0)
        )
    }
}

/// How a request presents its session.
#[derive(Debug, Clone, Copy)]
pub enum SessionCredential<'a> {
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// The session cookie, with the request's method and `x-csrf-token` header.
    Cookie {
        /// The cookie's value.
        token: &'a str,
        /// The request method.
        method: &'a Method,
        /// The `x-csrf-token` header, if present.
        csrf_header: Option<&'a str>,
    },
}

/// The user behind a live session.
#[derive(Debug, Clone)]
pub struct SessionUser {
    /// The user (fresh from the store).
    pub user: User,
    /// Hash of the session token (to keep this session in "log out the others").
    pub session_hash: [u8; 32],
}

impl AccountService {
    pub(crate) async fn create_session(&self, user: &UserId) -> Result<IssuedSession, AuthError> {
        let token = new_token(SESSION_PREFIX);
        let csrf_token = new_token("");
        let now = self.clock.now();
        let expires_at = now + self.config.session_ttl;
        self.store
            .insert_session(&SessionRecord {
                hash: sha256(&token),
                csrf_hash: sha256(&csrf_token),
                user_id: user.clone(),
                created_at: now,
                expires_at,
                revoked_at: None,
            })
            .await?;
        Ok(IssuedSession {
            token,
            csrf_token,
            user_id: user.clone(),
            expires_at,
        })
    }

    /// The user behind a session, or [`AuthError::SessionInvalid`] (unknown, logged out,
    /// expired, or the account may no longer log in) / [`AuthError::CsrfMismatch`].
    pub async fn authenticate_session(
        &self,
        credential: SessionCredential<'_>,
    ) -> Result<SessionUser, AuthError> {
        let token = match credential {
            SessionCredential::Bearer(t) | SessionCredential::Cookie { token: t, .. } => t,
        };
        if !token.starts_with(SESSION_PREFIX) || token.len() > 128 {
            return Err(AuthError::SessionInvalid);
        }
        let hash = sha256(token);
        let session = self
            .store
            .session(&hash)
            .await?
            .ok_or(AuthError::SessionInvalid)?;
        let now = self.clock.now();
        if session.revoked_at.is_some() || session.expires_at <= now {
            return Err(AuthError::SessionInvalid);
        }
        if let SessionCredential::Cookie {
            method,
            csrf_header,
            ..
        } = credential
        {
            let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let ok = csrf_header
                    .is_some_and(|h| h.len() <= 128 && ct_eq(&sha256(h), &session.csrf_hash));
                if !ok {
                    return Err(AuthError::CsrfMismatch);
                }
            }
        }
        let user = self
            .store
            .user_by_id(&session.user_id)
            .await?
            .ok_or(AuthError::SessionInvalid)?;
        if !user.status.allows_requests() && user.status != relay_core::AccountStatus::PastDue {
            return Err(AuthError::SessionInvalid);
        }
        Ok(SessionUser {
            user,
            session_hash: hash,
        })
    }

    /// End the session with `token`. Ending an unknown or ended session is not an error.
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        if token.len() <= 128 {
            self.store
                .revoke_session(&sha256(token), self.clock.now())
                .await?;
        }
        Ok(())
    }

    /// End every session of `user`. Returns how many ended.
    pub async fn logout_everywhere(&self, user: &UserId) -> Result<u64, AuthError> {
        Ok(self
            .store
            .revoke_user_sessions(user, None, self.clock.now())
            .await?)
    }
}
