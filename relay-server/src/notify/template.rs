//! The mails relay sends: subject, plain text and simple HTML for each kind.
//!
//! Everything put into the HTML part is escaped; tokens go into links built from the
//! configured public base URL.

use relay_core::Money;
use serde::{Deserialize, Serialize};

/// One message to render.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Template {
    /// Confirm the address (single-use token).
    Verification {
        /// The token.
        token: String,
    },
    /// Someone tried to register this address again.
    AlreadyRegistered,
    /// Set a new password (single-use token).
    PasswordReset {
        /// The token.
        token: String,
    },
    /// A payment arrived.
    PaymentReceived {
        /// How much.
        amount: Money,
        /// Our order id.
        order: String,
    },
    /// The wallet is running low.
    LowBalance {
        /// The balance now.
        balance: Money,
    },
    /// The plan ends soon.
    PlanExpiring {
        /// The plan's name.
        plan: String,
        /// When it ends (RFC 3339 or a date).
        ends: String,
    },
    /// A renewal could not be paid.
    PastDue {
        /// What is owed.
        amount: Money,
        /// When the keys stop (RFC 3339 or a date).
        suspends: String,
    },
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: never in a log line.
        f.write_str(self.kind())
    }
}

/// A rendered mail.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies can carry tokens.
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Template {
    /// A short name of the kind (`verification`, `payment_received`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Template::Verification { .. } => "verification",
            Template::AlreadyRegistered => "already_registered",
            Template::PasswordReset { .. } => "password_reset",
            Template::PaymentReceived { .. } => "payment_received",
            Template::LowBalance { .. } => "low_balance",
            Template::PlanExpiring { .. } => "plan_expiring",
            Template::PastDue { .. } => "past_due",
        }
    }

    /// Render with links under `base_url` (like `https://relay.example.com`) and the
    /// service's `product` name.
    pub fn render(&self, product: &str, base_url: &str) -> Rendered {
        let base = base_url.trim_end_matches('/');
        let (subject, lines, link): (String, Vec<String>, Option<(String, &str)>) = match self {
            Template::Verification { token } => (
                format!("Confirm your email for {product}"),
                vec!["Please confirm your email address to finish signing up.".into()],
                Some((format!("{base}/verify?token={token}"), "Confirm email")),
            ),
            Template::AlreadyRegistered => (
                format!("Sign-up attempt on {product}"),
                vec![
                    "Someone tried to sign up with this address, which already has an account."
                        .into(),
                    "If it was you, log in or reset your password instead.".into(),
                ],
                Some((format!("{base}/login"), "Log in")),
            ),
            Template::PasswordReset { token } => (
                format!("Reset your {product} password"),
                vec![
                    "Use the link below to choose a new password.".into(),
                    "If you did not ask for this, ignore this mail.".into(),
                ],
                Some((format!("{base}/reset?token={token}"), "Reset password")),
            ),
            Template::PaymentReceived { amount, order } => (
                format!("Payment received: {amount}"),
                vec![format!(
                    "We received your payment of {amount} for order {order}. Thank you."
                )],
                Some((format!("{base}/billing"), "View billing")),
            ),
            Template::LowBalance { balance } => (
                format!("Your {product} balance is low"),
                vec![format!(
                    "Your balance is {balance}. Top up to keep your API keys working."
                )],
                Some((format!("{base}/billing/top-up"), "Top up")),
            ),
            Template::PlanExpiring { plan, ends } => (
                format!("Your {plan} plan ends soon"),
                vec![format!(
                    "Your {plan} plan ends on {ends}. Renew to keep your API keys working."
                )],
                Some((format!("{base}/billing"), "Renew")),
            ),
            Template::PastDue { amount, suspends } => (
                format!("Payment failed: {amount} past due"),
                vec![format!(
                    "We could not collect {amount} for your subscription. Your keys will be suspended on {suspends} unless it is paid."
                )],
                Some((format!("{base}/billing"), "Pay now")),
            ),
        };
        let mut text = String::new();
        let mut html = String::from("<!doctype html><html><body>");
        for l in &lines {
            text.push_str(l);
            text.push_str("\n\n");
            html.push_str(&format!("<p>{}</p>", escape(l)));
        }
        if let Some((url, label)) = link {
            text.push_str(&format!("{label}: {url}\n\n"));
            html.push_str(&format!(
                "<p><a href=\"{}\">{}</a></p>",
                escape(&url),
                escape(label)
            ));
        }
        text.push_str(&format!("-- \n{product}\n"));
        html.push_str(&format!("<p>{}</p></body></html>", escape(product)));
        Rendered {
            subject,
            text,
            html,
        }
    }
}

/// Escape text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
