//! What the REST API sends and receives, with their OpenAPI schemas. Domain records are
//! converted here so the wire format is owned by the API, not by the crates' structs.

use chrono::{DateTime, Utc};
use relay_auth::{ApiKeyRecord, User};
use relay_billing::{Invoice, Order, OrderPurpose, Plan, Subscription, Transaction, Wallet};
use relay_core::{Money, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An exact amount: a decimal string and an ISO currency code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MoneyDto {
    /// Decimal string, e.g. `"12.50"` (never a float).
    pub amount: String,
    /// ISO 4217 code, e.g. `"USD"`.
    pub currency: String,
}

impl From<Money> for MoneyDto {
    fn from(m: Money) -> Self {
        Self {
            amount: m.amount().to_string(),
            currency: m.currency().code().to_owned(),
        }
    }
}

/// A plain acknowledgement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OkDto {
    /// Always true.
    pub ok: bool,
    /// What happened, in words.
    pub message: String,
}

impl OkDto {
    /// An acknowledgement saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
        }
    }
}

/// A user account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserDto {
    /// Id.
    pub id: String,
    /// Email address.
    pub email: String,
    /// `admin`, `operator` or `user`.
    pub role: String,
    /// Account status.
    pub status: String,
    /// Whether the email is verified.
    pub email_verified: bool,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// Display name, if set.
    pub display_name: Option<String>,
    /// Risk flags (admin views only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_flags: Option<Vec<RiskFlagDto>>,
}

/// A risk flag an admin set on a user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RiskFlagDto {
    /// Name.
    pub flag: String,
    /// Why.
    pub reason: String,
    /// Who set it (user id).
    pub actor: Option<String>,
    /// When.
    pub set_at: DateTime<Utc>,
}

impl From<&relay_auth::RiskFlag> for RiskFlagDto {
    fn from(f: &relay_auth::RiskFlag) -> Self {
        Self {
            flag: f.flag.clone(),
            reason: f.reason.clone(),
            actor: f.actor.as_ref().map(ToString::to_string),
            set_at: f.set_at,
        }
    }
}

impl From<&User> for UserDto {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.to_string(),
            role: u.role.as_str().to_owned(),
            status: status_name(u.status),
            email_verified: u.email_verified_at.is_some(),
            created_at: u.created_at,
            display_name: u.display_name.clone(),
            risk_flags: None,
        }
    }
}

/// Snake-case account status.
pub fn status_name(s: relay_core::AccountStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}").to_lowercase())
}

/// A new session (tokens shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDto {
    /// Bearer token (`Authorization: Bearer ...`); also set as an HttpOnly cookie.
    pub token: String,
    /// CSRF token to send as `x-csrf-token` with cookie-authenticated unsafe requests.
    pub csrf_token: String,
    /// Whose session.
    pub user_id: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// A TOTP enrolment (secret and recovery codes shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrolmentDto {
    /// `otpauth://` URI for authenticator apps.
    pub otpauth_uri: String,
    /// Single-use recovery codes.
    pub recovery_codes: Vec<String>,
}

/// A plan version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanDto {
    /// This version's id.
    pub id: String,
    /// Stable family name.
    pub family: String,
    /// Version number.
    pub version: u32,
    /// `active` or `archived`.
    pub status: String,
    /// The content (name, price, period, policy, limits).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
}

impl From<&Plan> for PlanDto {
    fn from(p: &Plan) -> Self {
        Self {
            id: p.id.to_string(),
            family: p.family.clone(),
            version: p.version,
            status: p.status.as_str().to_owned(),
            spec: serde_json::to_value(&p.spec).unwrap_or_default(),
            created_at: p.created_at,
        }
    }
}

/// An order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderDto {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// `top_up` or `plan_purchase`.
    pub purpose: String,
    /// The plan bought, for a plan purchase.
    pub plan_id: Option<String>,
    /// Amount.
    pub amount: MoneyDto,
    /// Status.
    pub status: String,
    /// Refunded so far.
    pub refunded: MoneyDto,
    /// Provider that paid it.
    pub provider: Option<String>,
    /// Provider's payment reference.
    pub provider_ref: Option<String>,
    /// The subscription it created or renewed.
    pub subscription_id: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expires unpaid.
    pub expires_at: DateTime<Utc>,
}

impl From<&Order> for OrderDto {
    fn from(o: &Order) -> Self {
        let (purpose, plan_id) = match &o.purpose {
            OrderPurpose::TopUp => ("top_up", None),
            OrderPurpose::PlanPurchase(p) => ("plan_purchase", Some(p.to_string())),
        };
        Self {
            id: o.id.to_string(),
            user_id: o.user_id.to_string(),
            purpose: purpose.to_owned(),
            plan_id,
            amount: o.amount.into(),
            status: o.status.as_str().to_owned(),
            refunded: o.refunded.into(),
            provider: o.provider.clone(),
            provider_ref: o.provider_ref.clone(),
            subscription_id: o.subscription_id.as_ref().map(ToString::to_string),
            created_at: o.created_at,
            expires_at: o.expires_at,
        }
    }
}

/// A checkout started with a provider.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckoutDto {
    /// The order it pays.
    pub order: OrderDto,
    /// Provider's checkout reference.
    pub provider_reference: String,
    /// Where to send the browser.
    pub redirect_url: Option<String>,
    /// QR code content to show.
    pub qr_code: Option<String>,
}

/// One invoice line.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLineDto {
    /// Kind.
    pub kind: String,
    /// Description.
    pub description: String,
    /// Amount.
    pub amount: MoneyDto,
}

/// An invoice or credit note.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvoiceDto {
    /// Id.
    pub id: String,
    /// `invoice` or `credit_note`.
    pub kind: String,
    /// Number, once finalised.
    pub number: Option<String>,
    /// Status.
    pub status: String,
    /// Lines.
    pub lines: Vec<InvoiceLineDto>,
    /// Before tax.
    pub subtotal: MoneyDto,
    /// Tax.
    pub tax: MoneyDto,
    /// Total.
    pub total: MoneyDto,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finalised.
    pub finalized_at: Option<DateTime<Utc>>,
}

fn snake<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{v:?}").to_lowercase())
}

impl From<&Invoice> for InvoiceDto {
    fn from(i: &Invoice) -> Self {
        Self {
            id: i.id.to_string(),
            kind: i.kind.as_str().to_owned(),
            number: i.number.clone(),
            status: i.status.as_str().to_owned(),
            lines: i
                .lines
                .iter()
                .map(|l| InvoiceLineDto {
                    kind: snake(&l.kind),
                    description: l.description.clone(),
                    amount: l.amount.into(),
                })
                .collect(),
            subtotal: i.subtotal.into(),
            tax: i.tax.into(),
            total: i.total.into(),
            created_at: i.created_at,
            finalized_at: i.finalized_at,
        }
    }
}

/// A wallet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceDto {
    /// Money available (negative: owed).
    pub balance: MoneyDto,
    /// How far below zero the wallet may go.
    pub credit_limit: MoneyDto,
}

impl From<&Wallet> for BalanceDto {
    fn from(w: &Wallet) -> Self {
        Self {
            balance: w.balance.into(),
            credit_limit: w.credit_limit.into(),
        }
    }
}

/// One ledger transaction as it touched the user's wallet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryDto {
    /// Transaction id.
    pub id: String,
    /// Kind (`top_up`, `plan_charge`, ...).
    pub kind: String,
    /// Memo.
    pub memo: String,
    /// Change of the wallet balance (positive: money in), per currency.
    pub wallet_change: Vec<MoneyDto>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl LedgerEntryDto {
    /// The transaction as `user` sees it.
    pub fn of(t: &Transaction, user: &UserId) -> Self {
        let mut per_currency: std::collections::BTreeMap<&'static str, Money> = Default::default();
        for e in &t.entries {
            if e.account == relay_billing::Account::Wallet(user.clone()) {
                let code = e.amount.currency().code();
                let prev = per_currency
                    .get(code)
                    .copied()
                    .unwrap_or_else(|| Money::zero(e.amount.currency()));
                // Entries are debit-positive; a wallet (a liability) grows with credits.
                if let Ok(sum) = prev.checked_sub(&e.amount) {
                    per_currency.insert(code, sum);
                }
            }
        }
        Self {
            id: t.id.clone(),
            kind: t.kind.as_str().to_owned(),
            memo: t.memo.clone(),
            wallet_change: per_currency.into_values().map(Into::into).collect(),
            created_at: t.created_at,
        }
    }
}

/// An API key (never the key itself).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyDto {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// First characters, to recognise it.
    pub hint: String,
    /// Limits.
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    /// Issued.
    pub created_at: DateTime<Utc>,
    /// Last used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Stops working (rotation grace end).
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Suspended because the plan ended.
    pub suspended_at: Option<DateTime<Utc>>,
    /// The key's own limits within the plan (`policy` is the plan's narrowed by these).
    #[schema(value_type = Option<Object>)]
    pub limits: Option<serde_json::Value>,
}

impl From<&ApiKeyRecord> for KeyDto {
    fn from(k: &ApiKeyRecord) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            tags: k.tags.clone(),
            hint: k.hint.clone(),
            policy: serde_json::to_value(&k.policy).unwrap_or_default(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            suspended_at: k.suspended_at,
            limits: k
                .own_limits
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok()),
        }
    }
}

/// A newly issued key: `key` is shown once and never again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedKeyDto {
    /// The key.
    pub key: String,
    /// Its record.
    pub record: KeyDto,
}

/// A subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionDto {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Plan version.
    pub plan_id: String,
    /// Status.
    pub status: String,
    /// Current period start.
    pub period_start: DateTime<Utc>,
    /// Current period end.
    pub period_end: Option<DateTime<Utc>>,
    /// Ends at period end.
    pub cancel_at_period_end: bool,
    /// Plan switched to at period end.
    pub pending_plan_id: Option<String>,
    /// Keys work until then while past due.
    pub grace_until: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

impl From<&Subscription> for SubscriptionDto {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.to_string(),
            user_id: s.user_id.to_string(),
            plan_id: s.plan_id.to_string(),
            status: s.status.as_str().to_owned(),
            period_start: s.period_start,
            period_end: s.period_end,
            cancel_at_period_end: s.cancel_at_period_end,
            pending_plan_id: s.pending_plan_id.as_ref().map(ToString::to_string),
            grace_until: s.grace_until,
            ended_at: s.ended_at,
        }
    }
}

/// Usage of one day and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRowDto {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Model (`*` when the source does not record models).
    pub model: String,
    /// Number of requests or batches.
    pub requests: u64,
    /// Cost at list price.
    pub cost: MoneyDto,
    /// Charged to the wallet, when the source knows it.
    pub charged: Option<MoneyDto>,
    /// Token counts, when the source records them.
    #[serde(default)]
    pub tokens: Option<TokensDto>,
}

/// Tokens of a usage row, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokensDto {
    /// Prompt tokens not read from or written to a cache.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Prompt tokens written to a 5-minute cache.
    pub cache_write_5m: u64,
    /// Prompt tokens written to a 1-hour cache.
    pub cache_write_1h: u64,
    /// Prompt tokens read from a cache.
    pub cache_read: u64,
}

impl From<&relay_core::Usage> for TokensDto {
    fn from(u: &relay_core::Usage) -> Self {
        Self {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_write_5m: u.cache_write_5m_tokens,
            cache_write_1h: u.cache_write_1h_tokens,
            cache_read: u.cache_read_tokens,
        }
    }
}

/// Everything stored about the user (data export).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportDto {
    /// The account.
    pub user: UserDto,
    /// API keys (records only).
    pub keys: Vec<KeyDto>,
    /// Orders.
    pub orders: Vec<OrderDto>,
    /// Invoices and credit notes.
    pub invoices: Vec<InvoiceDto>,
    /// Ledger history of the wallet.
    pub ledger: Vec<LedgerEntryDto>,
    /// Latest subscription.
    pub subscription: Option<SubscriptionDto>,
    /// Usage by day and model.
    pub usage: Vec<UsageRowDto>,
    /// Account status history.
    #[schema(value_type = Vec<Object>)]
    pub status_history: Vec<serde_json::Value>,
}
