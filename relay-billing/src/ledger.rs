//! The append-only double-entry ledger: accounts, entries, transactions.
//!
//! Sign convention: an entry's amount is positive for a **debit** and negative for a
//! **credit**; every transaction's entries sum to zero per currency. Accounts have a
//! normal side: a user's wallet is money the operator holds for the user (a liability,
//! credit-normal), so a top-up credits it and a charge debits it. [`Account::natural`]
//! turns a sum of entries into the balance people expect to read (a wallet with 10 USD
//! in it reads `+10`).
//!
//! | operation | debit | credit |
//! |---|---|---|
//! | top-up (payment received) | provider clearing | wallet |
//! | plan fee, usage, pay by balance | wallet | revenue (+ tax payable) |
//! | invoice on credit (failed renewal) | receivable | revenue (+ tax payable) |
//! | paying an open invoice | wallet | receivable |
//! | writing off an invoice | revenue (+ tax payable) | receivable |
//! | payment refunded by the provider | wallet | provider clearing |
//! | proration credit, charge credited back | refunds | wallet |
//! | redemption code, admin credit | promotions | wallet |
//! | admin debit | wallet | promotions |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use relay_core::{Currency, Money, UserId};
use ring::digest;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// A ledger account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// Money the operator holds for a user (prepaid balance).
    Wallet(UserId),
    /// Money a user owes (invoices issued on credit).
    Receivable(UserId),
    /// Income from plans and usage.
    Revenue,
    /// Tax collected on behalf of the tax authority.
    TaxPayable,
    /// Money on its way from (or back to) payment providers.
    ProviderClearing,
    /// Money given away: redemption codes, admin credits.
    Promotions,
    /// Revenue given back: proration credits and charges credited back.
    Refunds,
}

impl Account {
    /// The stored key, for example `wallet:usr_…`.
    pub fn key(&self) -> String {
        match self {
            Account::Wallet(u) => format!("wallet:{u}"),
            Account::Receivable(u) => format!("receivable:{u}"),
            Account::Revenue => "revenue".into(),
            Account::TaxPayable => "tax_payable".into(),
            Account::ProviderClearing => "provider_clearing".into(),
            Account::Promotions => "promotions".into(),
            Account::Refunds => "refunds".into(),
        }
    }

    /// True for accounts whose balance grows with debits (assets, expenses).
    pub fn is_debit_normal(&self) -> bool {
        matches!(
            self,
            Account::Receivable(_)
                | Account::ProviderClearing
                | Account::Promotions
                | Account::Refunds
        )
    }

    /// The readable balance of this account given the sum of its entries.
    pub fn natural(&self, entry_sum: Decimal) -> Decimal {
        if self.is_debit_normal() {
            entry_sum
        } else {
            -entry_sum
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl FromStr for Account {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self> {
        let user = |u: &str| {
            u.parse::<UserId>()
                .map_err(|e| BillingError::InvalidInput(e.to_string()))
        };
        Ok(match s {
            "revenue" => Account::Revenue,
            "tax_payable" => Account::TaxPayable,
            "provider_clearing" => Account::ProviderClearing,
            "promotions" => Account::Promotions,
            "refunds" => Account::Refunds,
            _ => {
                if let Some(u) = s.strip_prefix("wallet:") {
                    Account::Wallet(user(u)?)
                } else if let Some(u) = s.strip_prefix("receivable:") {
                    Account::Receivable(user(u)?)
                } else {
                    return Err(BillingError::InvalidInput(format!(
                        "unknown ledger account `{}`",
                        s.chars().take(64).collect::<String>()
                    )));
                }
            }
        })
    }
}

/// What a transaction records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    /// A payment received for an order.
    TopUp,
    /// A plan fee (purchase, renewal, upgrade) paid from the wallet.
    PlanCharge,
    /// Usage overage charged from the wallet.
    UsageCharge,
    /// A payment refunded by the provider.
    PaymentRefund,
    /// A charge credited back to the wallet (proration, goodwill).
    ChargeRefund,
    /// A redemption code.
    Promotion,
    /// An admin adjustment with a reason.
    Adjustment,
    /// An invoice issued on credit (receivable).
    InvoiceOnCredit,
    /// An open invoice paid from the wallet.
    ReceivablePayment,
    /// An open invoice written off as uncollectible.
    WriteOff,
}

impl TxKind {
    /// Snake-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::TopUp => "top_up",
            TxKind::PlanCharge => "plan_charge",
            TxKind::UsageCharge => "usage_charge",
            TxKind::PaymentRefund => "payment_refund",
            TxKind::ChargeRefund => "charge_refund",
            TxKind::Promotion => "promotion",
            TxKind::Adjustment => "adjustment",
            TxKind::InvoiceOnCredit => "invoice_on_credit",
            TxKind::ReceivablePayment => "receivable_payment",
            TxKind::WriteOff => "write_off",
        }
    }
}

impl FromStr for TxKind {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| BillingError::Corrupt(format!("unknown transaction kind `{s}`")))
    }
}

/// One line of a transaction: a debit (positive) or credit (negative) to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The account moved.
    pub account: Account,
    /// Positive: debit. Negative: credit.
    pub amount: Money,
}

impl Entry {
    /// Debit `account` by `amount` (which must be positive).
    pub fn debit(account: Account, amount: Money) -> Self {
        Self { account, amount }
    }

    /// Credit `account` by `amount` (which must be positive).
    pub fn credit(account: Account, amount: Money) -> Self {
        Self {
            account,
            amount: amount.negated(),
        }
    }
}

/// A transaction to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction {
    /// Unique per movement of money (payment event id, usage batch id, code, ...).
    pub idempotency_key: String,
    /// What it records.
    pub kind: TxKind,
    /// The user it concerns, if any.
    pub user_id: Option<UserId>,
    /// Free text (the reason of an adjustment, the order paid, ...).
    pub memo: String,
    /// The entries; they must balance.
    pub entries: Vec<Entry>,
    /// When true, wallet debits must keep the wallet at or above minus its credit limit
    /// (the guard). Facts that already happened elsewhere (a provider refund, consumed
    /// usage) are posted unguarded; a resulting debt shows in the account's standing.
    pub guarded: bool,
}

impl NewTransaction {
    /// Check the transaction: key present and short, at least two non-zero entries, one
    /// currency, balanced.
    pub fn validate(&self) -> Result<Currency> {
        let key = self.idempotency_key.trim();
        if key.is_empty() || key.len() > 200 || key != self.idempotency_key {
            return Err(BillingError::InvalidInput(
                "idempotency key must be 1 to 200 characters without surrounding spaces".into(),
            ));
        }
        if self.memo.len() > 1000 {
            return Err(BillingError::InvalidInput(
                "memo must be at most 1000 characters".into(),
            ));
        }
        if self.entries.len() < 2 {
            return Err(BillingError::InvalidInput(
                "a transaction needs at least two entries".into(),
            ));
        }
        let currency = self.entries[0].amount.currency();
        let mut sums: BTreeMap<Currency, Decimal> = BTreeMap::new();
        for e in &self.entries {
            if e.amount.is_zero() {
                return Err(BillingError::InvalidInput(format!(
                    "entry for {} is zero",
                    e.account
                )));
            }
            let s = sums.entry(e.amount.currency()).or_default();
            *s = s
                .checked_add(e.amount.amount())
                .ok_or(relay_core::MoneyError::Overflow)?;
        }
        for (c, sum) in &sums {
            if !sum.is_zero() {
                return Err(BillingError::Unbalanced {
                    currency: *c,
                    sum: *sum,
                });
            }
        }
        if sums.len() != 1 {
            return Err(BillingError::InvalidInput(
                "a transaction moves one currency".into(),
            ));
        }
        Ok(currency)
    }

    /// A digest of everything but the key, to tell a replay from a different operation
    /// under the same key.
    pub fn fingerprint(&self) -> String {
        let mut text = format!(
            "{}|{}|{}|{}",
            self.kind.as_str(),
            self.user_id.as_ref().map(|u| u.as_str()).unwrap_or(""),
            self.memo,
            self.guarded
        );
        for e in &self.entries {
            text.push_str(&format!(
                "|{}={}{}",
                e.account,
                e.amount.amount().normalize(),
                e.amount.currency()
            ));
        }
        hex::encode(digest::digest(&digest::SHA256, text.as_bytes()))
    }
}

/// A posted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Its id (`txn_` + 32 hex).
    pub id: String,
    /// Unique idempotency key.
    pub idempotency_key: String,
    /// What it records.
    pub kind: TxKind,
    /// The user it concerns, if any.
    pub user_id: Option<UserId>,
    /// Free text.
    pub memo: String,
    /// Its entries, in order.
    pub entries: Vec<Entry>,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
}

impl Transaction {
    /// The sum of this transaction's entries per currency (always zero for a stored one).
    pub fn sums(&self) -> BTreeMap<Currency, Decimal> {
        let mut sums = BTreeMap::new();
        for e in &self.entries {
            *sums.entry(e.amount.currency()).or_insert(Decimal::ZERO) += e.amount.amount();
        }
        sums
    }

    /// The amount this transaction moved on `account` (sum of its entries there).
    pub fn net_for(&self, account: &Account) -> Decimal {
        self.entries
            .iter()
            .filter(|e| &e.account == account)
            .map(|e| e.amount.amount())
            .sum()
    }
}

/// The result of posting: a new transaction, or the one posted before under the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Posted now.
    New(Transaction),
    /// The key was used before with the same content; nothing changed.
    Replayed(Transaction),
}

impl Posted {
    /// The transaction, new or replayed.
    pub fn transaction(&self) -> &Transaction {
        match self {
            Posted::New(t) | Posted::Replayed(t) => t,
        }
    }

    /// True when this call posted it.
    pub fn is_new(&self) -> bool {
        matches!(self, Posted::New(_))
    }
}

/// A user's wallet in one currency: the cached balance and the credit limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// The owner.
    pub user_id: UserId,
    /// Cached balance (positive: money available).
    pub balance: Money,
    /// How far below zero the balance may go through guarded debits.
    pub credit_limit: Money,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Money {
        Money::parse(s, Currency::USD).unwrap_or_else(|_| Money::zero(Currency::USD))
    }

    #[test]
    fn validation_rejects_unbalanced_and_malformed() {
        let u = UserId::new();
        let ok = NewTransaction {
            idempotency_key: "k".into(),
            kind: TxKind::TopUp,
            user_id: Some(u.clone()),
            memo: String::new(),
            entries: vec![
                Entry::debit(Account::ProviderClearing, usd("5")),
                Entry::credit(Account::Wallet(u.clone()), usd("5")),
            ],
            guarded: true,
        };
        assert_eq!(ok.validate().ok(), Some(Currency::USD));
        let mut bad = ok.clone();
        bad.entries[1].amount = usd("-4.99");
        assert!(matches!(
            bad.validate(),
            Err(BillingError::Unbalanced { .. })
        ));
        let mut bad = ok.clone();
        bad.idempotency_key = " k".into();
        assert!(matches!(bad.validate(), Err(BillingError::InvalidInput(_))));
        let mut bad = ok.clone();
        bad.entries.truncate(1);
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.entries = vec![
            Entry::debit(Account::Revenue, usd("0")),
            Entry::credit(Account::Refunds, usd("0")),
        ];
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.entries.push(Entry::debit(
            Account::Revenue,
            Money::parse("1", Currency::EUR).unwrap_or_else(|_| Money::zero(Currency::EUR)),
        ));
        bad.entries.push(Entry::credit(
            Account::Refunds,
            Money::parse("1", Currency::EUR).unwrap_or_else(|_| Money::zero(Currency::EUR)),
        ));
        assert!(bad.validate().is_err());
        let mut other = ok.clone();
        other.memo = "x".into();
        assert_ne!(ok.fingerprint(), other.fingerprint());
    }

    #[test]
    fn accounts_round_trip() {
        let u = UserId::new();
        for a in [
            Account::Wallet(u.clone()),
            Account::Receivable(u.clone()),
            Account::Revenue,
            Account::TaxPayable,
            Account::ProviderClearing,
            Account::Promotions,
            Account::Refunds,
        ] {
            assert_eq!(a.key().parse::<Account>().ok(), Some(a));
        }
        assert!("wallet:nope".parse::<Account>().is_err());
        assert!("bank".parse::<Account>().is_err());
    }
}
