//! Exact money on `rust_decimal`.
//!
//! A [`Money`] is an amount and a [`Currency`]. Amounts keep full precision (a per-token
//! price has many decimal places); [`Money::round_to_minor`] is the one place that rounds,
//! half-even to the currency's minor unit, and billing calls it once, at invoice time.
//! Arithmetic across currencies returns [`MoneyError::CurrencyMismatch`] rather than
//! mixing them.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a money operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The two operands are in different currencies.
    #[error("cannot combine {left} with {right}: amounts are in different currencies")]
    CurrencyMismatch {
        /// Currency of the left operand.
        left: Currency,
        /// Currency of the right operand.
        right: Currency,
    },
    /// The result does not fit a decimal (about 7.9e28).
    #[error("amount out of range")]
    Overflow,
    /// The currency code is not one relay knows.
    #[error("unknown currency `{0}`: expected an ISO 4217 code such as USD, EUR, CNY or JPY")]
    UnknownCurrency(String),
    /// The amount text is not a decimal number.
    #[error("`{0}` is not a decimal amount")]
    InvalidAmount(String),
}

macro_rules! currencies {
    ($($code:ident = $minor:literal, $doc:literal;)*) => {
        /// An ISO 4217 currency relay can bill in; each knows its minor unit.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Currency {
            $(#[doc = $doc] $code,)*
        }

        impl Currency {
            /// Every supported currency.
            pub const ALL: &'static [Currency] = &[$(Currency::$code,)*];

            /// The ISO 4217 code.
            pub fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code),)* }
            }

            /// Decimal places of the minor unit (USD 2: cents; JPY 0).
            pub fn minor_units(self) -> u32 {
                match self { $(Currency::$code => $minor,)* }
            }
        }

        impl FromStr for Currency {
            type Err = MoneyError;
            fn from_str(s: &str) -> Result<Self, MoneyError> {
                match s.trim().to_ascii_uppercase().as_str() {
                    $(stringify!($code) => Ok(Currency::$code),)*
                    _ => Err(MoneyError::UnknownCurrency(s.chars().take(16).collect())),
                }
            }
        }
    };
}

currencies! {
    USD = 2, "US dollar.";
    EUR = 2, "Euro.";
    GBP = 2, "Pound sterling.";
    CNY = 2, "Chinese yuan renminbi.";
    HKD = 2, "Hong Kong dollar.";
    SGD = 2, "Singapore dollar.";
    CAD = 2, "Canadian dollar.";
    AUD = 2, "Australian dollar.";
    CHF = 2, "Swiss franc.";
    INR = 2, "Indian rupee.";
    BRL = 2, "Brazilian real.";
    JPY = 0, "Japanese yen.";
    KRW = 0, "South Korean won.";
    TWD = 2, "New Taiwan dollar.";
    BHD = 3, "Bahraini dinar.";
    KWD = 3, "Kuwaiti dinar.";
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An exact amount of one currency. Serialises as `{"amount": "1.25", "currency": "USD"}`
/// with the amount as a decimal string, so no JSON reader turns it into a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// `amount` of `currency`, kept at full precision.
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// Zero of `currency`.
    pub fn zero(currency: Currency) -> Self {
        Self::new(Decimal::ZERO, currency)
    }

    /// Parse an amount such as `"12.50"` (no floats involved).
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        let text = amount.trim();
        let amount = Decimal::from_str_exact(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| MoneyError::InvalidAmount(text.chars().take(40).collect()))?;
        Ok(Self::new(amount, currency))
    }

    /// An amount given in minor units (cents for USD, yen for JPY).
    pub fn from_minor(minor: i64, currency: Currency) -> Self {
        Self::new(Decimal::new(minor, currency.minor_units()), currency)
    }

    /// The exact amount.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// True when the amount is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// True when the amount is below zero.
    pub fn is_negative(&self) -> bool {
        self.amount.is_sign_negative() && !self.amount.is_zero()
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    /// `self + other`, in one currency.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// `self - other`, in one currency.
    pub fn checked_sub(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// `self * factor` (a quantity, multiplier or rate), exact.
    pub fn checked_mul(&self, factor: Decimal) -> Result<Money, MoneyError> {
        let amount = self
            .amount
            .checked_mul(factor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// Compare two amounts of one currency.
    pub fn checked_cmp(&self, other: &Money) -> Result<std::cmp::Ordering, MoneyError> {
        self.same_currency(other)?;
        Ok(self.amount.cmp(&other.amount))
    }

    /// The negated amount.
    pub fn negated(&self) -> Money {
        Money::new(-self.amount, self.currency)
    }

    /// Sum amounts that must all be in `currency`.
    pub fn sum<'a>(
        currency: Currency,
        items: impl IntoIterator<Item = &'a Money>,
    ) -> Result<Money, MoneyError> {
        items
            .into_iter()
            .try_fold(Money::zero(currency), |acc, m| acc.checked_add(m))
    }

    /// The one rounding function: half-even (banker's rounding) to the currency's minor
    /// unit. Billing calls it once, when an invoice is finalised.
    pub fn round_to_minor(&self) -> Money {
        let amount = self.amount.round_dp_with_strategy(
            self.currency.minor_units(),
            RoundingStrategy::MidpointNearestEven,
        );
        Money::new(amount, self.currency)
    }

    /// The amount in minor units, if it is already rounded to them and fits an `i64`.
    pub fn to_minor(&self) -> Option<i64> {
        let scaled = self
            .amount
            .checked_mul(Decimal::from(10i64.pow(self.currency.minor_units())))?;
        if scaled.fract().is_zero() {
            i64::try_from(scaled).ok()
        } else {
            None
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount.normalize(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn usd(s: &str) -> Money {
        Money::parse(s, Currency::USD).unwrap()
    }

    #[test]
    fn minor_units_are_known() {
        assert_eq!(Currency::USD.minor_units(), 2);
        assert_eq!(Currency::CNY.minor_units(), 2);
        assert_eq!(Currency::JPY.minor_units(), 0);
        assert_eq!(Currency::KWD.minor_units(), 3);
        assert_eq!("cny".parse::<Currency>().unwrap(), Currency::CNY);
        let err = "XYZ".parse::<Currency>().unwrap_err();
        assert!(err.to_string().contains("unknown currency `XYZ`"));
    }

    #[test]
    fn half_even_rounding_golden_cases() {
        assert_eq!(usd("0.125").round_to_minor(), usd("0.12"));
        assert_eq!(usd("0.135").round_to_minor(), usd("0.14"));
        assert_eq!(usd("0.1251").round_to_minor(), usd("0.13"));
        assert_eq!(usd("-0.125").round_to_minor(), usd("-0.12"));
        let yen = Money::parse("2.5", Currency::JPY).unwrap();
        assert_eq!(yen.round_to_minor().amount(), dec!(2));
        let yen = Money::parse("3.5", Currency::JPY).unwrap();
        assert_eq!(yen.round_to_minor().amount(), dec!(4));
    }

    #[test]
    fn cross_currency_is_an_error() {
        let a = usd("1");
        let b = Money::parse("1", Currency::EUR).unwrap();
        let err = a.checked_add(&b).unwrap_err();
        assert_eq!(
            err,
            MoneyError::CurrencyMismatch {
                left: Currency::USD,
                right: Currency::EUR
            }
        );
        assert!(a.checked_sub(&b).is_err());
        assert!(a.checked_cmp(&b).is_err());
        assert!(Money::sum(Currency::USD, &[a, b]).is_err());
    }

    #[test]
    fn overflow_is_an_error() {
        let big = Money::new(Decimal::MAX, Currency::USD);
        assert_eq!(big.checked_add(&usd("1")), Err(MoneyError::Overflow));
        assert_eq!(big.checked_mul(dec!(2)), Err(MoneyError::Overflow));
    }

    #[test]
    fn parsing_is_exact_and_rejects_garbage() {
        assert_eq!(usd("3e-06").amount(), dec!(0.000003));
        assert_eq!(usd(" 12.50 ").amount(), dec!(12.50));
        for bad in ["", "abc", "1,5", "NaN", "inf", "1.2.3"] {
            assert!(Money::parse(bad, Currency::USD).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_uses_decimal_strings() {
        let m = usd("0.000003");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"amount":"0.000003","currency":"USD"}"#);
        let back: Money = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<Money>(r#"{"amount":"1","currency":"XYZ"}"#).is_err());
    }

    #[test]
    fn minor_unit_conversion() {
        assert_eq!(Money::from_minor(1234, Currency::USD), usd("12.34"));
        assert_eq!(usd("12.34").to_minor(), Some(1234));
        assert_eq!(usd("12.345").to_minor(), None);
        assert_eq!(Money::from_minor(500, Currency::JPY).amount(), dec!(500));
    }

    fn amount() -> impl Strategy<Value = Decimal> {
        (any::<i64>(), 0u32..12).prop_map(|(m, s)| Decimal::new(m / 1000, s))
    }

    proptest! {
        #[test]
        fn addition_commutes_and_subtraction_inverts(a in amount(), b in amount()) {
            let x = Money::new(a, Currency::USD);
            let y = Money::new(b, Currency::USD);
            prop_assert_eq!(x.checked_add(&y).unwrap(), y.checked_add(&x).unwrap());
            prop_assert_eq!(x.checked_add(&y).unwrap().checked_sub(&y).unwrap(), x);
        }

        #[test]
        fn rounding_is_idempotent_and_within_half_a_minor_unit(a in amount()) {
            for c in [Currency::USD, Currency::JPY, Currency::KWD] {
                let m = Money::new(a, c);
                let r = m.round_to_minor();
                prop_assert_eq!(r.round_to_minor(), r);
                prop_assert!(r.amount().scale() <= c.minor_units());
                let half = Decimal::new(5, c.minor_units() + 1);
                prop_assert!((r.amount() - a).abs() <= half);
            }
        }

        #[test]
        fn rounding_a_sum_of_rounded_parts_is_stable(parts in proptest::collection::vec(amount(), 0..20)) {
            let rounded: Vec<Money> = parts.iter().map(|d| Money::new(*d, Currency::CNY).round_to_minor()).collect();
            let total = Money::sum(Currency::CNY, &rounded).unwrap();
            prop_assert_eq!(total.round_to_minor(), total);
        }

        #[test]
        fn mixing_currencies_always_fails(a in amount(), b in amount()) {
            let x = Money::new(a, Currency::USD);
            let y = Money::new(b, Currency::CNY);
            let mismatch = x.checked_add(&y).is_err();
            prop_assert!(mismatch);
        }
    }
}
