//! Operator settings billing needs in its operations.

use chrono::Duration;
use relay_core::Currency;

use crate::invoice::TaxRule;

/// How billing behaves; the server builds it from its configuration.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    /// Whose invoice number sequence documents use (one gapless sequence per operator).
    pub operator: String,
    /// Tax on invoices.
    pub tax: TaxRule,
    /// How long keys keep working after a failed renewal.
    pub grace: Duration,
    /// Time between payment attempts while past due.
    pub retry_interval: Duration,
    /// How long a suspended subscription waits for payment before it expires and its
    /// open invoice is written off as uncollectible.
    pub suspended_until_expiry: Duration,
    /// How long an order waits for payment.
    pub order_ttl: Duration,
    /// Currency of wallets that have no other information (usage batches name theirs).
    pub default_currency: Currency,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            operator: "default".into(),
            tax: TaxRule::NONE,
            grace: Duration::days(3),
            retry_interval: Duration::days(1),
            suspended_until_expiry: Duration::days(30),
            order_ttl: Duration::hours(24),
            default_currency: Currency::USD,
        }
    }
}
