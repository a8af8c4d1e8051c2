//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, user};

/// The REST API's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "relay REST API", description = "User and admin API of the relay gateway. \
        Every error is `{\"error\":{\"code\",\"message\",\"field\"}}`."),
    modifiers(&SessionAuth),
    security(("bearer" = []), ("cookie" = [])),
    paths(
        user::account::register, user::account::verify_email, user::account::login,
        user::account::logout, user::account::request_reset, user::account::confirm_reset,
        user::account::profile, user::account::update_profile, user::account::totp_enrol,
        user::account::totp_confirm, user::account::totp_disable, user::account::export,
        user::account::delete_account,
        user::billing::plans, user::billing::checkout, user::billing::top_up,
        user::billing::orders, user::billing::order, user::billing::invoices,
        user::billing::invoice, user::billing::balance, user::billing::ledger,
        user::billing::redeem, user::billing::subscription,
        user::keys::list, user::keys::create, user::keys::rotate, user::keys::revoke,
        user::keys::update,
        user::usage::usage,
        admin::users::search, admin::users::set_status, admin::users::set_role,
        admin::users::set_flag, admin::users::clear_flag,
        admin::orders::get_order, admin::orders::of_user, admin::orders::ledger_of_user,
        admin::orders::invoices_of_user,
        admin::money::adjust, admin::money::top_up, admin::money::manual_payment,
        admin::money::refund,
        admin::plans::list, admin::plans::create, admin::plans::revise, admin::plans::archive,
        admin::subscriptions::of_user, admin::subscriptions::change_plan,
        admin::subscriptions::cancel,
        admin::codes::generate, admin::codes::get_code,
        admin::reports::revenue, admin::reports::subscriptions,
        admin::reports::usage_vs_revenue, admin::reports::overdue,
        admin::audit::search,
        admin::subscriptions::extend,
        admin::upstreams::list, admin::upstreams::create, admin::upstreams::update,
        admin::upstreams::remove,
        admin::prices::list, admin::prices::set, admin::prices::clear,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail)),
)]
pub struct ApiDoc;

/// Adds the two ways to present a session.
#[derive(Debug)]
struct SessionAuth;

impl Modify for SessionAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                relay_auth::session::SESSION_COOKIE,
            ))),
        );
    }
}

/// `GET /openapi.json`.
pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
