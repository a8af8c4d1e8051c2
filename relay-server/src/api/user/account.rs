//! Account routes: register, verify, login, logout, reset, profile, TOTP, export, delete.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use relay_auth::LoginRequest;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::dto::{
    ExportDto, InvoiceDto, KeyDto, LedgerEntryDto, OkDto, OrderDto, SessionDto, SubscriptionDto,
    TotpEnrolmentDto, UserDto,
};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{text, ApiJson, ClientIp, Session};
use crate::api::{listing, ApiState};

/// Email and password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Email address.
    pub email: String,
    /// Password (10 to 128 characters).
    pub password: String,
}

/// A single-use token from a notice.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token.
    pub token: String,
}

/// A login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// Email address.
    pub email: String,
    /// Password.
    pub password: String,
    /// TOTP or recovery code, when two-factor authentication is enabled.
    #[serde(default)]
    pub totp: Option<String>,
}

/// An email address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// Email address.
    pub email: String,
}

/// A new password with the reset token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirmRequest {
    /// The token from the reset notice.
    pub token: String,
    /// The new password.
    pub password: String,
}

/// A profile change: any of a new password, a new email address (confirmed from the new
/// mailbox before it takes effect) and a display name. Changing the password or the email
/// needs the current password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// The current password (for a new password or email).
    #[serde(default)]
    pub current_password: Option<String>,
    /// The new password (10 to 128 characters).
    #[serde(default)]
    pub new_password: Option<String>,
    /// The new email address; a verification link goes to it, and the account moves when
    /// it is used. The answer is the same whether or not the address is taken.
    #[serde(default)]
    pub email: Option<String>,
    /// Display name (at most 100 characters; empty clears it).
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A one-time code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// TOTP code (or a recovery code to disable).
    pub code: String,
}

/// Confirmation of account deletion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// The account's email address, typed again.
    pub confirm_email: String,
}

fn ip_key(ip: ClientIp) -> String {
    ip.0.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// Register; answers the same whether or not the address was taken.
#[utoipa::path(post, path = "/api/user/register", tag = "user", request_body = RegisterRequest,
    responses((status = 202, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn register(
    State(s): State<ApiState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<OkDto>)> {
    s.limit(
        &format!("api:register:{}", ip_key(ip)),
        s.config.register_limit,
    )
    .await?;
    s.accounts
        .register(&body.email, &body.password, ip.0)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(OkDto::new("check your mailbox for a verification link")),
    ))
}

/// Verify an email address with the token from the notice.
#[utoipa::path(post, path = "/api/user/verify-email", tag = "user", request_body = TokenRequest,
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn verify_email(
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> ApiResult<Json<OkDto>> {
    s.accounts.verify_email(&body.token).await?;
    Ok(Json(OkDto::new("email verified")))
}

/// Log in; the session token is returned once and set as an HttpOnly cookie.
#[utoipa::path(post, path = "/api/user/login", tag = "user", request_body = LoginBody,
    responses((status = 200, body = SessionDto), (status = "4XX", body = ErrorBody)))]
pub async fn login(
    State(s): State<ApiState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult<Response> {
    let email_key: String = body.email.trim().to_lowercase().chars().take(254).collect();
    s.limit(
        &format!("api:login:{}:{email_key}", ip_key(ip)),
        s.config.login_limit,
    )
    .await?;
    let session = s
        .accounts
        .login(LoginRequest {
            email: &body.email,
            password: &body.password,
            second_factor: body.totp.as_deref(),
            ip: ip.0,
        })
        .await?;
    let now = s.clock.now();
    let mut headers = HeaderMap::new();
    if s.config.session_cookie {
        for c in [session.cookie(now), session.csrf_cookie(now)] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                headers.append(header::SET_COOKIE, v);
            }
        }
    }
    let dto = SessionDto {
        token: session.token.clone(),
        csrf_token: session.csrf_token.clone(),
        user_id: session.user_id.to_string(),
        expires_at: session.expires_at,
    };
    Ok((headers, Json(dto)).into_response())
}

/// End this session.
#[utoipa::path(post, path = "/api/user/logout", tag = "user",
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn logout(State(s): State<ApiState>, me: Session) -> ApiResult<Response> {
    s.accounts.logout(&me.token).await?;
    let mut headers = HeaderMap::new();
    for name in [
        relay_auth::session::SESSION_COOKIE,
        relay_auth::session::CSRF_COOKIE,
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{name}=; Path=/; Max-Age=0; Secure; SameSite=Strict"
        )) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    Ok((headers, Json(OkDto::new("logged out"))).into_response())
}

/// Ask for a password reset; answers the same whether or not the address is known.
#[utoipa::path(post, path = "/api/user/password-reset", tag = "user", request_body = EmailRequest,
    responses((status = 202, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn request_reset(
    State(s): State<ApiState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<EmailRequest>,
) -> ApiResult<(StatusCode, Json<OkDto>)> {
    s.limit(&format!("api:reset:{}", ip_key(ip)), s.config.reset_limit)
        .await?;
    s.accounts.request_password_reset(&body.email, ip.0).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(OkDto::new(
            "if the address has an account, a reset link is on its way",
        )),
    ))
}

/// Set a new password with the reset token (ends every session).
#[utoipa::path(post, path = "/api/user/password-reset/confirm", tag = "user",
    request_body = ResetConfirmRequest,
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn confirm_reset(
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<ResetConfirmRequest>,
) -> ApiResult<Json<OkDto>> {
    s.accounts
        .reset_password(&body.token, &body.password)
        .await?;
    Ok(Json(OkDto::new("password changed; log in again")))
}

/// The logged-in user.
#[utoipa::path(get, path = "/api/user/profile", tag = "user",
    responses((status = 200, body = UserDto), (status = "4XX", body = ErrorBody)))]
pub async fn profile(me: Session) -> Json<UserDto> {
    Json(UserDto::from(&me.user.user))
}

/// Change the password (ends the other sessions), start an email change, or set the
/// display name. Everything is validated before anything changes.
#[utoipa::path(patch, path = "/api/user/profile", tag = "user", request_body = ProfileUpdate,
    responses((status = 200, body = UserDto), (status = "4XX", body = ErrorBody)))]
pub async fn update_profile(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<ProfileUpdate>,
) -> ApiResult<Json<UserDto>> {
    let user = &me.user.user;
    if body.new_password.is_none() && body.email.is_none() && body.display_name.is_none() {
        return Err(ApiError::invalid(
            "new_password",
            "give at least one of new_password, email or display_name",
        ));
    }
    // Validate every field first, so bad input changes nothing.
    let name = body
        .display_name
        .as_deref()
        .map(relay_auth::profile::display_name)
        .transpose()?;
    if let Some(e) = &body.email {
        let email =
            relay_auth::Email::parse(e).map_err(|e| ApiError::invalid("email", e.to_string()))?;
        if email == user.email {
            return Err(ApiError::invalid(
                "email",
                "that is already the account's address",
            ));
        }
    }
    if let Some(p) = &body.new_password {
        relay_auth::Password::new_for_account(p)
            .map_err(|e| ApiError::invalid("new_password", e.to_string()))?;
    }
    let current = match (
        &body.current_password,
        body.new_password.is_some() || body.email.is_some(),
    ) {
        (Some(c), _) => c.as_str(),
        (None, true) => {
            return Err(ApiError::invalid(
                "current_password",
                "the current password is needed to change the password or email",
            ))
        }
        (None, false) => "",
    };
    let credentials = |e: relay_auth::AuthError| {
        let e = ApiError::from(e);
        match e.detail.field.as_deref() {
            Some("password") => e.with_field("current_password"),
            _ if e.detail.code == "invalid_credentials" => e.with_field("current_password"),
            _ => e,
        }
    };
    if let Some(new_password) = &body.new_password {
        s.accounts
            .change_password(&user.id, &me.user.session_hash, current, new_password)
            .await
            .map_err(credentials)?;
    }
    if let Some(email) = &body.email {
        s.accounts
            .request_email_change(&user.id, current, email)
            .await
            .map_err(credentials)?;
    }
    if let Some(name) = name {
        s.accounts
            .set_display_name(&user.id, name.as_deref().unwrap_or(""))
            .await?;
    }
    let fresh = s.accounts.user(&user.id).await?;
    Ok(Json(UserDto::from(&fresh)))
}

/// TOTP needs a key to seal secrets; without one the routes exist but answer 404.
fn totp_available(s: &ApiState) -> ApiResult<()> {
    if s.accounts.totp_available() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_configured",
        "two-factor authentication is not available on this server (RELAY_ENCRYPTION_KEY is not set)",
    ))
}

/// Start TOTP enrolment (confirm it with a code).
#[utoipa::path(post, path = "/api/user/totp/enrol", tag = "user",
    responses((status = 200, body = TotpEnrolmentDto), (status = "4XX", body = ErrorBody)))]
pub async fn totp_enrol(
    State(s): State<ApiState>,
    me: Session,
) -> ApiResult<Json<TotpEnrolmentDto>> {
    totp_available(&s)?;
    let e = s.accounts.enrol_totp(&me.user.user.id).await?;
    Ok(Json(TotpEnrolmentDto {
        otpauth_uri: e.otpauth_uri.clone(),
        recovery_codes: e.recovery_codes.clone(),
    }))
}

/// Confirm TOTP enrolment with a current code.
#[utoipa::path(post, path = "/api/user/totp/confirm", tag = "user", request_body = CodeRequest,
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn totp_confirm(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<CodeRequest>,
) -> ApiResult<Json<OkDto>> {
    totp_available(&s)?;
    s.accounts
        .confirm_totp(&me.user.user.id, &body.code)
        .await?;
    Ok(Json(OkDto::new("two-factor authentication enabled")))
}

/// Disable TOTP with a current or recovery code.
#[utoipa::path(post, path = "/api/user/totp/disable", tag = "user", request_body = CodeRequest,
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn totp_disable(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<CodeRequest>,
) -> ApiResult<Json<OkDto>> {
    totp_available(&s)?;
    s.accounts
        .disable_totp(&me.user.user.id, &body.code)
        .await?;
    Ok(Json(OkDto::new("two-factor authentication disabled")))
}

/// Everything stored about the user, as JSON.
#[utoipa::path(get, path = "/api/user/export", tag = "user",
    responses((status = 200, body = ExportDto), (status = "4XX", body = ErrorBody)))]
pub async fn export(State(s): State<ApiState>, me: Session) -> ApiResult<Response> {
    let user = &me.user.user;
    let keys = s.keys.list(&user.id).await?;
    let orders = listing::orders_of_user(&s.billing_sql, &user.id, 10_000).await?;
    let store = s.billing.store();
    let invoices = store.invoices(&user.id).await?;
    let ledger = store.transactions(Some(&user.id)).await?;
    let subscription = store.latest_subscription(&user.id).await?;
    let now = s.clock.now();
    let usage = s
        .usage
        .usage_by_day(
            &user.id,
            user.created_at - chrono::Duration::days(1),
            now + chrono::Duration::days(1),
        )
        .await?;
    let history = s
        .accounts
        .store()
        .status_history(&user.id)
        .await
        .map_err(relay_auth::AuthError::from)?;
    let dto = ExportDto {
        user: UserDto::from(user),
        keys: keys.iter().map(KeyDto::from).collect(),
        orders: orders.iter().map(OrderDto::from).collect(),
        invoices: invoices.iter().map(InvoiceDto::from).collect(),
        ledger: ledger
            .iter()
            .map(|t| LedgerEntryDto::of(t, &user.id))
            .collect(),
        subscription: subscription.as_ref().map(SubscriptionDto::from),
        usage,
        status_history: history
            .iter()
            .filter_map(|h| serde_json::to_value(h).ok())
            .collect(),
    };
    let mut resp = Json(dto).into_response();
    resp.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"relay-export.json\""),
    );
    Ok(resp)
}

/// Delete the account: subscription canceled, keys revoked, personal data erased (email
/// replaced by a placeholder, password, TOTP, sessions, tokens, display name and outbox
/// mails removed; see [`crate::api::user::erase`]), status closed (final). The ledger and
/// invoices are kept, as the law requires; they name only the opaque user id. The address
/// can register again, as a new account.
#[utoipa::path(delete, path = "/api/user/account", tag = "user", request_body = DeleteRequest,
    responses((status = 200, body = OkDto), (status = "4XX", body = ErrorBody)))]
pub async fn delete_account(
    State(s): State<ApiState>,
    me: Session,
    ApiJson(body): ApiJson<DeleteRequest>,
) -> ApiResult<Json<OkDto>> {
    let user = &me.user.user;
    let typed = text("confirm_email", &body.confirm_email, 1, 254)?;
    if !typed.eq_ignore_ascii_case(user.email.as_str()) {
        return Err(ApiError::invalid(
            "confirm_email",
            "type the account's email address to confirm",
        ));
    }
    if let Some(sub) = s.billing.store().latest_subscription(&user.id).await? {
        if sub.status.is_live() {
            s.billing
                .cancel(&sub.id, false, &format!("user:{}", user.id))
                .await?;
        }
    }
    for k in s.keys.list(&user.id).await? {
        if k.revoked_at.is_none() {
            s.keys.revoke(&k.id).await?;
        }
    }
    // Other places first: once the account is erased the user cannot retry.
    crate::api::user::erase::erase_outbox(&s, &user.id, &user.email).await?;
    s.accounts
        .erase(
            &user.id,
            Some(&user.id),
            "account deleted and erased by the user",
        )
        .await?;
    Ok(Json(OkDto::new(
        "account closed; billing records are kept under an anonymous id",
    )))
}
