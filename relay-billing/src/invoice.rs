//! Invoices and credit notes.
//!
//! A document is a draft until finalised; finalising allocates the next number of the
//! operator's gapless sequence (`INV-000001`, credit notes `CN-000001`) in the same
//! database transaction, rounds every line to the currency's minor unit (half-even, the
//! one place money is rounded) and computes tax. From then on lines and totals never
//! change; only the status moves (open → paid, void or uncollectible), and corrections
//! are credit notes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use relay_core::{Currency, InvoiceId, Money, SubscriptionId, UserId};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// Tax applied to invoices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxRule {
    /// Rate as a fraction (0.2 = 20 %).
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// True: line amounts already include tax. False: tax is added on top.
    pub inclusive: bool,
}

impl TaxRule {
    /// No tax.
    pub const NONE: TaxRule = TaxRule {
        rate: Decimal::ZERO,
        inclusive: false,
    };

    /// The rate must be in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        if self.rate < Decimal::ZERO || self.rate >= Decimal::ONE {
            return Err(BillingError::InvalidInput(
                "tax rate must be at least 0 and below 1 (0.2 means 20 %)".into(),
            ));
        }
        Ok(())
    }
}

/// What a line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A plan's period fee.
    PlanFee,
    /// Credit for the unused part of a period (negative).
    Proration,
    /// Usage at cost.
    Usage,
    /// Usage beyond the included credit.
    Overage,
    /// Anything else an operator adds.
    Adjustment,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// What for.
    pub kind: LineKind,
    /// Shown to the customer.
    pub description: String,
    /// Amount (tax included when the rule is inclusive); exact in a draft, rounded once
    /// the document is finalised.
    pub amount: Money,
}

/// Invoice or credit note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// An invoice.
    Invoice,
    /// A correction of a finalised invoice (amounts are what is credited, positive).
    CreditNote,
}

impl DocumentKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Invoice => "invoice",
            DocumentKind::CreditNote => "credit_note",
        }
    }

    /// Number prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            DocumentKind::Invoice => "INV",
            DocumentKind::CreditNote => "CN",
        }
    }
}

/// Where an invoice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Being assembled; no number yet.
    Draft,
    /// Finalised, waiting for payment.
    Open,
    /// Paid.
    Paid,
    /// Cancelled before payment.
    Void,
    /// Given up on (bad debt).
    Uncollectible,
}

impl InvoiceStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Uncollectible => "uncollectible",
        }
    }
}

impl fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InvoiceStatus {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "draft" => InvoiceStatus::Draft,
            "open" => InvoiceStatus::Open,
            "paid" => InvoiceStatus::Paid,
            "void" => InvoiceStatus::Void,
            "uncollectible" => InvoiceStatus::Uncollectible,
            other => {
                return Err(BillingError::Corrupt(format!(
                    "unknown invoice status `{other}`"
                )))
            }
        })
    }
}

/// An invoice or credit note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Its id.
    pub id: InvoiceId,
    /// Invoice or credit note.
    pub kind: DocumentKind,
    /// The operator whose sequence numbers it.
    pub operator: String,
    /// `INV-000001`; `None` while a draft.
    pub number: Option<String>,
    /// The customer.
    pub user_id: UserId,
    /// The subscription it bills, if any.
    pub subscription_id: Option<SubscriptionId>,
    /// For a credit note: the invoice it corrects.
    pub corrects: Option<InvoiceId>,
    /// Currency of every line.
    pub currency: Currency,
    /// Where it is.
    pub status: InvoiceStatus,
    /// Tax rule in force when it was created.
    pub tax_rule: TaxRule,
    /// Lines.
    pub lines: Vec<LineItem>,
    /// Net of tax.
    pub subtotal: Money,
    /// Tax.
    pub tax: Money,
    /// What the customer pays.
    pub total: Money,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finalised.
    pub finalized_at: Option<DateTime<Utc>>,
    /// Paid, voided or written off.
    pub closed_at: Option<DateTime<Utc>>,
}

/// Totals of a finalised document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// The lines, each rounded to the minor unit.
    pub lines: Vec<LineItem>,
    /// Net of tax.
    pub subtotal: Money,
    /// Tax.
    pub tax: Money,
    /// Gross.
    pub total: Money,
}

/// Round each line once, then compute tax once from the rounded sum:
/// exclusive: `tax = round(sum × rate)`, `total = sum + tax`;
/// inclusive: `tax = round(sum × rate / (1 + rate))`, `subtotal = sum − tax`.
pub fn compute_totals(currency: Currency, lines: &[LineItem], rule: TaxRule) -> Result<Totals> {
    rule.validate()?;
    let mut rounded = Vec::with_capacity(lines.len());
    for l in lines {
        if l.amount.currency() != currency {
            return Err(BillingError::InvalidInput(format!(
                "line `{}` is in {}, the invoice in {currency}",
                l.description,
                l.amount.currency()
            )));
        }
        rounded.push(LineItem {
            amount: l.amount.round_to_minor(),
            ..l.clone()
        });
    }
    let sum = Money::sum(currency, rounded.iter().map(|l| &l.amount))?;
    let (subtotal, tax, total) = if rule.inclusive {
        let factor = rule
            .rate
            .checked_div(Decimal::ONE + rule.rate)
            .ok_or(relay_core::MoneyError::Overflow)?;
        let tax = sum.checked_mul(factor)?.round_to_minor();
        (sum.checked_sub(&tax)?, tax, sum)
    } else {
        let tax = sum.checked_mul(rule.rate)?.round_to_minor();
        (sum, tax, sum.checked_add(&tax)?)
    };
    Ok(Totals {
        lines: rounded,
        subtotal,
        tax,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        Money::parse(s, Currency::USD).unwrap_or_else(|_| Money::zero(Currency::USD))
    }

    fn line(amount: &str) -> LineItem {
        LineItem {
            kind: LineKind::PlanFee,
            description: "x".into(),
            amount: usd(amount),
        }
    }

    fn totals(lines: &[LineItem], rate: &str, inclusive: bool) -> (Money, Money, Money) {
        let rule = TaxRule {
            rate: rate.parse().unwrap_or_default(),
            inclusive,
        };
        let t = compute_totals(Currency::USD, lines, rule);
        let t = t.map(|t| (t.subtotal, t.tax, t.total));
        t.unwrap_or((usd("-1"), usd("-1"), usd("-1")))
    }

    #[test]
    fn tax_golden_cases() {
        // Exclusive 7.25 % on 19.99: 19.99 × 0.0725 = 1.449275 -> 1.45; total 21.44.
        assert_eq!(
            totals(&[line("19.99")], "0.0725", false),
            (usd("19.99"), usd("1.45"), usd("21.44"))
        );
        // Inclusive 19 % in 9.99: 9.99 × 0.19 / 1.19 = 1.5950420168… -> 1.60;
        // subtotal 9.99 − 1.60 = 8.39.
        assert_eq!(
            totals(&[line("9.99")], "0.19", true),
            (usd("8.39"), usd("1.60"), usd("9.99"))
        );
        // Exclusive 10 % on 0.25: 0.025 is a midpoint, half-even -> 0.02.
        assert_eq!(
            totals(&[line("0.25")], "0.1", false),
            (usd("0.25"), usd("0.02"), usd("0.27"))
        );
        // Lines are rounded once each before summing: 30.00 plan fee and a proration
        // credit of −20.3225806… (-> −20.32): 9.68; 20 % exclusive tax 1.936 -> 1.94;
        // total 11.62.
        assert_eq!(
            totals(
                &[line("30.00"), line("-20.322580645161290322580645161")],
                "0.2",
                false
            ),
            (usd("9.68"), usd("1.94"), usd("11.62"))
        );
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn totals_add_up_and_are_rounded_once(
            amounts in proptest::collection::vec(-1_000_000_000i64..1_000_000_000, 1..8),
            rate_bp in 0i64..5000,
            inclusive in any::<bool>(),
        ) {
            let lines: Vec<LineItem> = amounts
                .iter()
                .map(|a| LineItem { kind: LineKind::Usage, description: "u".into(), amount: Money::new(Decimal::new(*a, 6), Currency::USD) })
                .collect();
            let rule = TaxRule { rate: Decimal::new(rate_bp, 4), inclusive };
            let t = compute_totals(Currency::USD, &lines, rule).unwrap();
            prop_assert_eq!(t.subtotal.checked_add(&t.tax).unwrap(), t.total);
            for (rounded, exact) in t.lines.iter().zip(&lines) {
                prop_assert_eq!(rounded.amount, exact.amount.round_to_minor());
            }
            for m in [t.subtotal, t.tax, t.total] {
                prop_assert_eq!(m.round_to_minor(), m);
            }
            let sum = Money::sum(Currency::USD, t.lines.iter().map(|l| &l.amount)).unwrap();
            prop_assert_eq!(if inclusive { t.total } else { t.subtotal }, sum);
        }
    }

    #[test]
    fn bad_rates_and_currencies_are_refused() {
        for rate in ["-0.1", "1", "2"] {
            let rule = TaxRule {
                rate: rate.parse().unwrap_or_default(),
                inclusive: false,
            };
            assert!(compute_totals(Currency::USD, &[line("1")], rule).is_err());
        }
        let eur = LineItem {
            amount: Money::from_minor(100, Currency::EUR),
            ..line("1")
        };
        assert!(compute_totals(Currency::USD, &[eur], TaxRule::NONE).is_err());
    }
}
