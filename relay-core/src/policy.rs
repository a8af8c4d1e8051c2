//! What a key may do: [`KeyPolicy`].
//!
//! A policy is plain data, usually from a plan template, and is checked by
//! [`KeyPolicy::validate`] before it is stored. Enforcement lives elsewhere: the static
//! checks (model, service, client, IP, expiry) are helpers here; windows, concurrency and
//! budgets are counted by relay-usage's limiter.
//!
//! Budget periods are computed in the policy's timezone: a daily budget resets at local
//! midnight, a monthly one at local midnight on the 1st, a weekly one on
//! `weekly_reset_day` at `weekly_reset_hour` local time. When a reset falls in a gap of a
//! daylight-saving change, the first valid instant after it is used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};

/// An upstream API family a key can be allowed to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions and Responses APIs.
    Openai,
    /// Google Gemini `generateContent` API.
    Gemini,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 3] = [Service::Anthropic, Service::Openai, Service::Gemini];

    /// Lower-case name, as used in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Anthropic => "anthropic",
            Service::Openai => "openai",
            Service::Gemini => "gemini",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "anthropic" => Ok(Service::Anthropic),
            "openai" => Ok(Service::Openai),
            "gemini" => Ok(Service::Gemini),
            _ => Err(PolicyError::UnknownService(s.chars().take(32).collect())),
        }
    }
}

/// A family of client programs, recognised from the `User-Agent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientFamily {
    /// Anthropic's Claude Code (`claude-cli/…`).
    ClaudeCode,
    /// OpenAI's Codex CLI (`codex_cli_rs/…`, `codex-cli/…`).
    CodexCli,
    /// Google's Gemini CLI (`GeminiCLI/…`).
    GeminiCli,
}

impl ClientFamily {
    /// Recognise a client family from a `User-Agent` value.
    pub fn from_user_agent(user_agent: &str) -> Option<ClientFamily> {
        let ua = user_agent.trim_start().to_ascii_lowercase();
        if ua.starts_with("claude-cli/") || ua.starts_with("claude-code/") {
            Some(ClientFamily::ClaudeCode)
        } else if ua.starts_with("codex_cli_rs/")
            || ua.starts_with("codex-cli/")
            || ua.starts_with("codex_exec/")
        {
            Some(ClientFamily::CodexCli)
        } else if ua.starts_with("geminicli/") || ua.starts_with("gemini-cli/") {
            Some(ClientFamily::GeminiCli)
        } else {
            None
        }
    }
}

/// One rate window: caps over any span of `window_secs` seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateWindow {
    /// Length of the window in seconds.
    pub window_secs: u64,
    /// Most requests admitted per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    /// Most tokens (prompt and output) per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most cost per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<Money>,
}

/// How long a budget's period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// From local midnight to the next.
    Daily,
    /// From the weekly reset day and hour to the next.
    Weekly,
    /// From local midnight on the 1st to the next 1st.
    Monthly,
    /// Never resets.
    Total,
}

impl BudgetPeriod {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Total => "total",
        }
    }
}

/// A cost cap over a budget period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The period the cap applies to.
    pub period: BudgetPeriod,
    /// Most cost per period.
    pub cap: Money,
}

/// When budget periods start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetSchedule {
    /// IANA timezone the periods are computed in.
    pub timezone: Tz,
    /// Day the weekly budget resets.
    pub weekly_reset_day: Weekday,
    /// Local hour (0-23) the weekly budget resets.
    pub weekly_reset_hour: u8,
}

impl Default for BudgetSchedule {
    fn default() -> Self {
        Self {
            timezone: Tz::UTC,
            weekly_reset_day: Weekday::Mon,
            weekly_reset_hour: 0,
        }
    }
}

fn local_start(tz: Tz, date: NaiveDate, hour: u32) -> DateTime<Utc> {
    // Walk forward over a daylight-saving gap: the first valid instant at or after the
    // wall-clock time.
    let mut naive = date.and_time(NaiveTime::from_hms_opt(hour.min(23), 0, 0).unwrap_or_default());
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.with_timezone(&Utc);
        }
        naive += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&naive)
}

impl BudgetSchedule {
    /// Start of the period containing `now`, or `None` for [`BudgetPeriod::Total`].
    pub fn period_start(&self, period: BudgetPeriod, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.timezone;
        let local = now.with_timezone(&tz);
        let today = local.date_naive();
        match period {
            BudgetPeriod::Total => None,
            BudgetPeriod::Daily => {
                let start = local_start(tz, today, 0);
                Some(if start > now {
                    local_start(tz, today.pred_opt()?, 0)
                } else {
                    start
                })
            }
            BudgetPeriod::Monthly => {
                let first = today.with_day(1)?;
                Some(local_start(tz, first, 0))
            }
            BudgetPeriod::Weekly => {
                let hour = u32::from(self.weekly_reset_hour);
                let back = (7 + today.weekday().num_days_from_monday()
                    - self.weekly_reset_day.num_days_from_monday())
                    % 7;
                let day = today - Duration::days(i64::from(back));
                let start = local_start(tz, day, hour);
                Some(if start > now {
                    local_start(tz, day - Duration::days(7), hour)
                } else {
                    start
                })
            }
        }
    }

    /// Start of the period after the one containing `now`, or `None` for
    /// [`BudgetPeriod::Total`].
    pub fn period_end(&self, period: BudgetPeriod, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.timezone;
        let start = self
            .period_start(period, now)?
            .with_timezone(&tz)
            .date_naive();
        match period {
            BudgetPeriod::Total => None,
            BudgetPeriod::Daily => Some(local_start(tz, start.succ_opt()?, 0)),
            BudgetPeriod::Weekly => Some(local_start(
                tz,
                start + Duration::days(7),
                u32::from(self.weekly_reset_hour),
            )),
            BudgetPeriod::Monthly => {
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                Some(local_start(tz, NaiveDate::from_ymd_opt(y, m, 1)?, 0))
            }
        }
    }
}

/// When a key stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiry {
    /// At a fixed instant.
    At(DateTime<Utc>),
    /// `seconds` after the key's first use (an unused key never expires).
    AfterFirstUse {
        /// Lifetime after first use, in seconds.
        seconds: u64,
    },
}

/// Every limit an API key can carry. An empty policy (the [`Default`]) allows everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyPolicy {
    /// Currency every cost cap is in; the price book's currency (USD for the shared catalog).
    pub currency: Currency,
    /// Most requests in flight at once.
    pub concurrency: Option<u32>,
    /// Rate windows, each with its own caps.
    pub rate_windows: Vec<RateWindow>,
    /// Cost caps per period.
    pub budgets: Vec<Budget>,
    /// When budget periods start.
    pub budget_schedule: BudgetSchedule,
    /// Models the key may use (`*` at the end matches any suffix). Empty: any model.
    pub allowed_models: Vec<String>,
    /// Models the key may never use (same syntax); checked before the allow-list.
    pub denied_models: Vec<String>,
    /// Services the key may use. Empty: every service.
    pub services: BTreeSet<Service>,
    /// Client families the key may be used from. Empty: any client.
    pub clients: BTreeSet<ClientFamily>,
    /// Networks requests may come from. Empty: anywhere.
    pub ip_allow: Vec<IpNet>,
    /// When the key stops working.
    pub expiry: Option<Expiry>,
    /// Cost multiplier per service (1 when absent); applied before budgets are charged.
    pub service_multipliers: BTreeMap<Service, Decimal>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            currency: Currency::USD,
            concurrency: None,
            rate_windows: Vec::new(),
            budgets: Vec::new(),
            budget_schedule: BudgetSchedule::default(),
            allowed_models: Vec::new(),
            denied_models: Vec::new(),
            services: BTreeSet::new(),
            clients: BTreeSet::new(),
            ip_allow: Vec::new(),
            expiry: None,
            service_multipliers: BTreeMap::new(),
        }
    }
}

/// Why a policy is invalid, or a policy value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `concurrency` is zero, which would refuse every request.
    #[error("concurrency must be at least 1 (leave it unset for no limit)")]
    ZeroConcurrency,
    /// More rate windows than [`KeyPolicy::MAX_RATE_WINDOWS`].
    #[error("{count} rate windows: a policy may have at most {max}")]
    TooManyWindows {
        /// How many the policy has.
        count: usize,
        /// The most allowed.
        max: usize,
    },
    /// A rate window has zero length.
    #[error(
        "rate window #{index} has a length of 0 seconds: give it a length of at least 1 second"
    )]
    ZeroWindow {
        /// Position in `rate_windows`.
        index: usize,
    },
    /// A rate window sets no cap at all.
    #[error("rate window #{index} ({window_secs} s) sets no cap: give it max_requests, max_tokens or max_cost")]
    EmptyWindow {
        /// Position in `rate_windows`.
        index: usize,
        /// Its length.
        window_secs: u64,
    },
    /// Two rate windows have the same length.
    #[error("two rate windows are {window_secs} s long: merge their caps into one window")]
    DuplicateWindow {
        /// The repeated length.
        window_secs: u64,
    },
    /// A cap of zero requests or tokens.
    #[error("{field} is 0, which refuses every request: remove the cap or raise it")]
    ZeroCap {
        /// Which cap.
        field: String,
    },
    /// A cost cap is zero or negative.
    #[error("{field} must be greater than zero, got {value}")]
    NonPositiveCap {
        /// Which cap.
        field: String,
        /// Its value.
        value: String,
    },
    /// A cost cap is in another currency than the policy's.
    #[error("{field} is in {found} but this policy counts cost in {expected}")]
    CapCurrency {
        /// Which cap.
        field: String,
        /// The cap's currency.
        found: Currency,
        /// The policy's currency.
        expected: Currency,
    },
    /// Two budgets for one period.
    #[error("two {period} budgets: keep one")]
    DuplicateBudget {
        /// The repeated period.
        period: &'static str,
    },
    /// `weekly_reset_hour` is not an hour of the day.
    #[error("weekly_reset_hour must be 0-23, got {0}")]
    ResetHour(u8),
    /// A model pattern is empty or has a `*` anywhere but at the end.
    #[error("model pattern `{0}` is invalid: use a model name, optionally ending in `*`")]
    ModelPattern(String),
    /// An allowed model is also denied, so it could never be used.
    #[error("model `{allowed}` is allowed but also denied by `{denied}`: remove it from one list")]
    AllowDenyOverlap {
        /// The allow-list entry.
        allowed: String,
        /// The deny-list entry that covers it.
        denied: String,
    },
    /// A service multiplier is zero or negative.
    #[error("cost multiplier for {service} must be greater than zero, got {value}")]
    Multiplier {
        /// The service.
        service: Service,
        /// The multiplier.
        value: Decimal,
    },
    /// `expiry.after_first_use` is zero seconds.
    #[error("expiry after first use must be at least 1 second")]
    ZeroExpiry,
    /// A service name is unknown.
    #[error("unknown service `{0}`: expected anthropic, openai or gemini")]
    UnknownService(String),
}

fn pattern_is_valid(p: &str) -> bool {
    let body = p.strip_suffix('*').unwrap_or(p);
    !p.is_empty() && p.len() <= 256 && !body.contains('*') && !p.chars().any(char::is_whitespace)
}

/// Does `pattern` (a name, or a prefix ending in `*`) match the model `name`?
pub fn model_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Does deny pattern `deny` match every name that allow pattern `allow` matches?
fn covers(deny: &str, allow: &str) -> bool {
    match (deny.strip_suffix('*'), allow.strip_suffix('*')) {
        (Some(d), Some(a)) => a.starts_with(d),
        (Some(d), None) => allow.starts_with(d),
        (None, Some(_)) => false,
        (None, None) => deny == allow,
    }
}

impl KeyPolicy {
    /// Most rate windows a policy may have (the Redis limiter's scripts are generated per
    /// policy shape, and keep every counter in a Lua local).
    pub const MAX_RATE_WINDOWS: usize = 8;

    /// Check the policy for settings that make no sense, with a message a user can act on.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.concurrency == Some(0) {
            return Err(PolicyError::ZeroConcurrency);
        }
        if self.rate_windows.len() > Self::MAX_RATE_WINDOWS {
            return Err(PolicyError::TooManyWindows {
                count: self.rate_windows.len(),
                max: Self::MAX_RATE_WINDOWS,
            });
        }
        let mut lengths = BTreeSet::new();
        for (index, w) in self.rate_windows.iter().enumerate() {
            if w.window_secs == 0 {
                return Err(PolicyError::ZeroWindow { index });
            }
            if !lengths.insert(w.window_secs) {
                return Err(PolicyError::DuplicateWindow {
                    window_secs: w.window_secs,
                });
            }
            if w.max_requests.is_none() && w.max_tokens.is_none() && w.max_cost.is_none() {
                return Err(PolicyError::EmptyWindow {
                    index,
                    window_secs: w.window_secs,
                });
            }
            if w.max_requests == Some(0) {
                return Err(PolicyError::ZeroCap {
                    field: format!("rate window #{index} max_requests"),
                });
            }
            if w.max_tokens == Some(0) {
                return Err(PolicyError::ZeroCap {
                    field: format!("rate window #{index} max_tokens"),
                });
            }
            if let Some(cap) = &w.max_cost {
                self.check_cost_cap(&format!("rate window #{index} max_cost"), cap)?;
            }
        }
        let mut periods = BTreeSet::new();
        for b in &self.budgets {
            if !periods.insert(b.period) {
                return Err(PolicyError::DuplicateBudget {
                    period: b.period.as_str(),
                });
            }
            self.check_cost_cap(&format!("{} budget cap", b.period.as_str()), &b.cap)?;
        }
        if self.budget_schedule.weekly_reset_hour > 23 {
            return Err(PolicyError::ResetHour(
                self.budget_schedule.weekly_reset_hour,
            ));
        }
        for p in self.allowed_models.iter().chain(&self.denied_models) {
            if !pattern_is_valid(p) {
                return Err(PolicyError::ModelPattern(p.chars().take(64).collect()));
            }
        }
        for allowed in &self.allowed_models {
            if let Some(denied) = self.denied_models.iter().find(|d| covers(d, allowed)) {
                return Err(PolicyError::AllowDenyOverlap {
                    allowed: allowed.clone(),
                    denied: denied.clone(),
                });
            }
        }
        for (service, value) in &self.service_multipliers {
            if *value <= Decimal::ZERO {
                return Err(PolicyError::Multiplier {
                    service: *service,
                    value: *value,
                });
            }
        }
        if let Some(Expiry::AfterFirstUse { seconds: 0 }) = self.expiry {
            return Err(PolicyError::ZeroExpiry);
        }
        Ok(())
    }

    fn check_cost_cap(&self, field: &str, cap: &Money) -> Result<(), PolicyError> {
        if cap.currency() != self.currency {
            return Err(PolicyError::CapCurrency {
                field: field.to_owned(),
                found: cap.currency(),
                expected: self.currency,
            });
        }
        if cap.amount() <= Decimal::ZERO {
            return Err(PolicyError::NonPositiveCap {
                field: field.to_owned(),
                value: cap.amount().to_string(),
            });
        }
        Ok(())
    }

    /// May this key use `model`? The deny-list wins; an empty allow-list allows any model.
    pub fn allows_model(&self, model: &str) -> bool {
        if self.denied_models.iter().any(|p| model_matches(p, model)) {
            return false;
        }
        self.allowed_models.is_empty()
            || self.allowed_models.iter().any(|p| model_matches(p, model))
    }

    /// May this key use `service`?
    pub fn allows_service(&self, service: Service) -> bool {
        self.services.is_empty() || self.services.contains(&service)
    }

    /// May this key be used from a client with this `User-Agent`?
    pub fn allows_client(&self, user_agent: Option<&str>) -> bool {
        if self.clients.is_empty() {
            return true;
        }
        user_agent
            .and_then(ClientFamily::from_user_agent)
            .is_some_and(|family| self.clients.contains(&family))
    }

    /// May a request come from `ip`?
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.ip_allow.is_empty() || self.ip_allow.iter().any(|net| net.contains(&ip))
    }

    /// When the key expires, given when it was first used (if ever).
    pub fn expires_at(&self, first_used: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match (&self.expiry, first_used) {
            (Some(Expiry::At(at)), _) => Some(*at),
            (Some(Expiry::AfterFirstUse { seconds }), Some(first)) => {
                let secs = i64::try_from(*seconds).unwrap_or(i64::MAX / 1000);
                Some(first + Duration::try_seconds(secs).unwrap_or(Duration::MAX))
            }
            _ => None,
        }
    }

    /// The cost multiplier for `service` (1 when none is set).
    pub fn multiplier(&self, service: Service) -> Decimal {
        self.service_multipliers
            .get(&service)
            .copied()
            .unwrap_or(Decimal::ONE)
    }
}

#[cfg(test)]
mod tests;
