//! Conversions between [`UsageEvent`] and the column values both backends store.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use relay_core::{ApiKeyId, Currency, Money, RequestId, Service, Usage, UserId};
use rust_decimal::Decimal;

use super::{DailyModelUsage, KeyTotals, SinkError};
use crate::sink::{MeterOutcome, UsageEvent};

/// Every column list of `usage_records`, in insert order.
pub(crate) const RECORD_COLUMNS: &str = "request_id, user_id, key_id, service, model, \
    input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, \
    cache_read_tokens, requests, cost, currency, outcome, status, at_ms";

/// Token columns of both tables, in order.
pub(crate) const TOKEN_COLUMNS: [&str; 6] = [
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "requests",
];

/// Counts are `BIGINT`: values beyond `i64::MAX` are stored as `i64::MAX`.
pub(crate) fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count back to `u64`.
pub(crate) fn from_db(n: i64, column: &str) -> Result<u64, SinkError> {
    u64::try_from(n).map_err(|_| SinkError::Corrupt(format!("negative {column}: {n}")))
}

/// Model names are stored without NUL characters (PostgreSQL text cannot hold them, and
/// an event must never become a batch that no retry can write).
pub(crate) fn clean_model(model: &str) -> std::borrow::Cow<'_, str> {
    if model.contains('\0') {
        std::borrow::Cow::Owned(model.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(model)
    }
}

/// The six counts of a usage, as stored.
pub(crate) fn usage_to_db(u: &Usage) -> [i64; 6] {
    [
        to_db(u.input_tokens),
        to_db(u.output_tokens),
        to_db(u.cache_write_5m_tokens),
        to_db(u.cache_write_1h_tokens),
        to_db(u.cache_read_tokens),
        to_db(u.requests),
    ]
}

/// Six stored counts back to a usage.
pub(crate) fn usage_from_db(v: [i64; 6]) -> Result<Usage, SinkError> {
    Ok(Usage {
        input_tokens: from_db(v[0], TOKEN_COLUMNS[0])?,
        output_tokens: from_db(v[1], TOKEN_COLUMNS[1])?,
        cache_write_5m_tokens: from_db(v[2], TOKEN_COLUMNS[2])?,
        cache_write_1h_tokens: from_db(v[3], TOKEN_COLUMNS[3])?,
        cache_read_tokens: from_db(v[4], TOKEN_COLUMNS[4])?,
        requests: from_db(v[5], TOKEN_COLUMNS[5])?,
    })
}

/// An exact decimal read back from its text form; never rounded.
pub(crate) fn parse_decimal(text: &str) -> Result<Decimal, SinkError> {
    Decimal::from_str_exact(text.trim())
        .map_err(|e| SinkError::Corrupt(format!("cost {text:?} is not an exact decimal: {e}")))
}

/// Parse a stored outcome name.
pub(crate) fn parse_outcome(s: &str) -> Result<MeterOutcome, SinkError> {
    const ALL: [MeterOutcome; 7] = [
        MeterOutcome::Complete,
        MeterOutcome::UsageMissing,
        MeterOutcome::Malformed,
        MeterOutcome::Truncated,
        MeterOutcome::ClientDisconnected,
        MeterOutcome::UpstreamError,
        MeterOutcome::UpstreamStatus,
    ];
    ALL.into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| SinkError::Corrupt(format!("unknown outcome {s:?}")))
}

fn corrupt<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> SinkError {
    move |e| SinkError::Corrupt(format!("{what}: {e}"))
}

/// The text columns of a stored record, read back.
pub(crate) struct StoredRecord {
    pub request_id: String,
    pub user_id: String,
    pub key_id: String,
    pub service: String,
    pub model: String,
    pub counts: [i64; 6],
    pub cost: Decimal,
    pub currency: String,
    pub outcome: String,
    pub status: i64,
    pub at_ms: i64,
}

impl StoredRecord {
    /// Back to the event it was written from.
    pub fn into_event(self) -> Result<UsageEvent, SinkError> {
        let currency = Currency::from_str(&self.currency).map_err(corrupt("currency"))?;
        Ok(UsageEvent {
            request_id: RequestId::from_str(&self.request_id).map_err(corrupt("request id"))?,
            user_id: UserId::from_str(&self.user_id).map_err(corrupt("user id"))?,
            key_id: ApiKeyId::from_str(&self.key_id).map_err(corrupt("key id"))?,
            service: Service::from_str(&self.service).map_err(corrupt("service"))?,
            model: self.model,
            usage: usage_from_db(self.counts)?,
            cost: Money::new(self.cost, currency),
            outcome: parse_outcome(&self.outcome)?,
            status: u16::try_from(self.status).map_err(corrupt("status"))?,
            at: DateTime::<Utc>::from_timestamp_millis(self.at_ms)
                .ok_or_else(|| SinkError::Corrupt(format!("timestamp {}", self.at_ms)))?,
        })
    }
}

/// First millisecond of a UTC day and of the next one.
pub(crate) fn day_bounds_ms(day: NaiveDate) -> Result<(i64, i64), SinkError> {
    let start = day
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis());
    let end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis());
    match (start, end) {
        (Some(s), Some(e)) => Ok((s, e)),
        _ => Err(SinkError::InvalidInput(format!(
            "day {day} is out of range"
        ))),
    }
}

/// One row of `usage_daily`, read back.
pub(crate) struct DailyRow {
    pub day: NaiveDate,
    pub key_id: String,
    pub model: String,
    pub currency: String,
    pub counts: [i64; 6],
    pub events: i64,
    pub cost: Decimal,
}

/// Running sums of rollup rows.
#[derive(Default)]
struct Sums {
    usage: Usage,
    events: u64,
    cost: Decimal,
}

impl Sums {
    fn add(&mut self, row: &DailyRow) -> Result<(), SinkError> {
        self.usage.accumulate(&usage_from_db(row.counts)?);
        self.events = self.events.saturating_add(from_db(row.events, "events")?);
        self.cost = self
            .cost
            .checked_add(row.cost)
            .ok_or_else(|| SinkError::Corrupt("cost sum overflows".into()))?;
        Ok(())
    }
}

/// Group rollup rows by (day, model, currency), summing over keys; exact in Rust on both
/// backends.
pub(crate) fn by_day_and_model(rows: &[DailyRow]) -> Result<Vec<DailyModelUsage>, SinkError> {
    let mut groups: BTreeMap<(NaiveDate, &str, &str), Sums> = BTreeMap::new();
    for row in rows {
        groups
            .entry((row.day, row.model.as_str(), row.currency.as_str()))
            .or_default()
            .add(row)?;
    }
    groups
        .into_iter()
        .map(|((day, model, currency), s)| {
            Ok(DailyModelUsage {
                day,
                model: model.to_owned(),
                currency: Currency::from_str(currency).map_err(corrupt("currency"))?,
                usage: s.usage,
                events: s.events,
                cost: s.cost,
            })
        })
        .collect()
}

/// Group rollup rows by (key, currency).
pub(crate) fn by_key(rows: &[DailyRow]) -> Result<Vec<KeyTotals>, SinkError> {
    let mut groups: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
    for row in rows {
        groups
            .entry((row.key_id.as_str(), row.currency.as_str()))
            .or_default()
            .add(row)?;
    }
    groups
        .into_iter()
        .map(|((key, currency), s)| {
            Ok(KeyTotals {
                key_id: ApiKeyId::from_str(key).map_err(corrupt("key id"))?,
                currency: Currency::from_str(currency).map_err(corrupt("currency"))?,
                usage: s.usage,
                events: s.events,
                cost: s.cost,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_or_fail() {
        assert_eq!(
            parse_decimal("0.000000001234567891").unwrap().to_string(),
            "0.000000001234567891"
        );
        assert!(parse_decimal("1e5").is_err());
        assert!(parse_decimal("abc").is_err());
        // More digits than rust_decimal holds must fail, not round.
        assert!(parse_decimal("0.00000000000000000000000000000001").is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        for o in [MeterOutcome::Complete, MeterOutcome::UpstreamStatus] {
            assert_eq!(parse_outcome(o.as_str()).unwrap(), o);
        }
        assert!(parse_outcome("nope").is_err());
    }

    #[test]
    fn counts_saturate_and_models_lose_nul() {
        assert_eq!(to_db(u64::MAX), i64::MAX);
        assert!(from_db(-1, "x").is_err());
        assert_eq!(clean_model("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn day_bounds() {
        let d = NaiveDate::from_ymd_opt(2025, 3, 1).unwrap();
        let (s, e) = day_bounds_ms(d).unwrap();
        assert_eq!(e - s, 86_400_000);
        assert!(day_bounds_ms(NaiveDate::MAX).is_err());
    }
}
