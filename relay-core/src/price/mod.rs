//! Per-model prices and exact cost.
//!
//! A [`PriceBook`] is loaded from LiteLLM's catalog format (see [`PriceBook::from_litellm_json`])
//! with every number read from its JSON text as an exact decimal, so `3e-06` is exactly
//! `0.000003` and never passes through `f64`. Operators layer their own prices, multipliers
//! and a default price for unknown models on top.
//!
//! ## Fallbacks
//!
//! Where the catalog has no cache price for a model, the price is derived from the input
//! price the way Anthropic prices caching: a 5-minute cache write costs 1.25x input, a 1-hour
//! write 2x input, a cache read 0.1x input. The same rule fills missing cache prices of a
//! long-context tier from the tier's input price; a tier without an output price uses the
//! base output price.
//!
//! ## Long-context tiers
//!
//! Keys such as `input_cost_per_token_above_200k_tokens` define a tier. When a request's
//! prompt (uncached input, cache writes and cache reads together) is above the threshold,
//! every token of that request is priced at the tier's rates, which is how Anthropic and
//! Google bill long context. With several tiers, the highest one exceeded applies.

mod catalog;
mod live;

// The model lookups run on every priced request: a fast seeded hash, not SipHash.
use foldhash::HashMap;
use std::sync::Arc;

use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money, MoneyError};
use crate::policy::model_matches;
use crate::usage::Usage;

pub use catalog::SkippedEntry;
pub use live::LiveOverrides;

/// Why a price could not be found or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// No price for the model, and no default price configured.
    #[error("no price for model `{0}` and no default price is configured")]
    UnknownModel(String),
    /// The catalog file is not a JSON object of entries.
    #[error("price catalog is not valid: {0}")]
    Catalog(String),
    /// The catalog file could not be read.
    #[error("cannot read price catalog {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// A price or multiplier is negative.
    #[error("{0} must not be negative")]
    Negative(String),
    /// The cost did not fit a decimal.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// Prices per token of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPrices {
    /// Uncached prompt token.
    #[serde(with = "rust_decimal::serde::str")]
    pub input: Decimal,
    /// Output token.
    #[serde(with = "rust_decimal::serde::str")]
    pub output: Decimal,
    /// Token written to a 5-minute cache.
    #[serde(with = "rust_decimal::serde::str")]
    pub cache_write_5m: Decimal,
    /// Token written to a 1-hour cache.
    #[serde(with = "rust_decimal::serde::str")]
    pub cache_write_1h: Decimal,
    /// Token read from a cache.
    #[serde(with = "rust_decimal::serde::str")]
    pub cache_read: Decimal,
}

/// Multiplier of the input price for a 5-minute cache write when the catalog has none.
pub const FALLBACK_CACHE_WRITE_5M: Decimal = Decimal::from_parts(125, 0, 0, false, 2);
/// Multiplier of the input price for a 1-hour cache write when the catalog has none.
pub const FALLBACK_CACHE_WRITE_1H: Decimal = Decimal::TWO;
/// Multiplier of the input price for a cache read when the catalog has none.
pub const FALLBACK_CACHE_READ: Decimal = Decimal::from_parts(1, 0, 0, false, 1);

impl TokenPrices {
    /// Input and output prices per token, with the documented cache fallbacks.
    pub fn per_token(input: Decimal, output: Decimal) -> Self {
        Self {
            input,
            output,
            cache_write_5m: input * FALLBACK_CACHE_WRITE_5M,
            cache_write_1h: input * FALLBACK_CACHE_WRITE_1H,
            cache_read: input * FALLBACK_CACHE_READ,
        }
    }

    /// Input and output prices per million tokens (how vendors publish them).
    pub fn per_million(input: Decimal, output: Decimal) -> Self {
        let million = Decimal::from(1_000_000);
        Self::per_token(input / million, output / million)
    }

    fn check(&self, what: &str) -> Result<(), PriceError> {
        let all = [
            self.input,
            self.output,
            self.cache_write_5m,
            self.cache_write_1h,
            self.cache_read,
        ];
        if all.iter().any(|p| p.is_sign_negative() && !p.is_zero()) {
            return Err(PriceError::Negative(format!("price of {what}")));
        }
        Ok(())
    }

    fn cost(&self, usage: &Usage) -> Option<Decimal> {
        let parts = [
            (self.input, usage.input_tokens),
            (self.output, usage.output_tokens),
            (self.cache_write_5m, usage.cache_write_5m_tokens),
            (self.cache_write_1h, usage.cache_write_1h_tokens),
            (self.cache_read, usage.cache_read_tokens),
        ];
        parts
            .iter()
            .try_fold(Decimal::ZERO, |acc, (price, tokens)| {
                let tokens = Decimal::from_u64(*tokens)?;
                acc.checked_add(price.checked_mul(tokens)?)
            })
    }
}

/// A long-context tier: prices that apply when the prompt is above `above_prompt_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTier {
    /// Prompt size the tier starts above.
    pub above_prompt_tokens: u64,
    /// Prices inside the tier.
    pub prices: TokenPrices,
}

/// Everything needed to price one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// Prices below every tier.
    pub base: TokenPrices,
    /// Long-context tiers, ascending by threshold.
    #[serde(default)]
    pub tiers: Vec<PriceTier>,
    /// The catalog's `litellm_provider`, when known.
    #[serde(default)]
    pub provider: Option<String>,
}

impl ModelPrice {
    /// A model with `base` prices and no tiers.
    pub fn new(base: TokenPrices) -> Self {
        Self {
            base,
            tiers: Vec::new(),
            provider: None,
        }
    }

    /// The prices that apply to a request with this usage.
    pub fn prices_for(&self, usage: &Usage) -> &TokenPrices {
        let prompt = usage.prompt_tokens();
        self.tiers
            .iter()
            .rev()
            .find(|t| prompt > t.above_prompt_tokens)
            .map_or(&self.base, |t| &t.prices)
    }

    /// The exact cost of `usage` at these prices, before multipliers.
    pub fn cost(&self, usage: &Usage) -> Result<Decimal, PriceError> {
        self.prices_for(usage)
            .cost(usage)
            .ok_or(PriceError::Money(MoneyError::Overflow))
    }

    fn check(&self, model: &str) -> Result<(), PriceError> {
        self.base.check(model)?;
        for t in &self.tiers {
            t.prices.check(model)?;
        }
        Ok(())
    }
}

/// Prices for every known model, with operator overrides layered on top.
#[derive(Debug, Clone)]
pub struct PriceBook {
    currency: Currency,
    catalog: HashMap<String, Arc<ModelPrice>>,
    /// Undated or lower-case names that point at a catalog entry.
    aliases: HashMap<String, String>,
    overrides: HashMap<String, Arc<ModelPrice>>,
    multipliers: Vec<(String, Decimal)>,
    global_multiplier: Decimal,
    default_price: Option<Arc<ModelPrice>>,
    /// Set while running; shared by clones of this book.
    live: LiveOverrides,
}

impl Default for PriceBook {
    fn default() -> Self {
        Self::empty(Currency::USD)
    }
}

/// Try `f` on the names `model` may be known by: as given, lower-case, without a
/// provider prefix, without a date suffix; the first hit wins.
fn each_name<T>(model: &str, mut f: impl FnMut(&str) -> Option<T>) -> Option<T> {
    if let Some(v) = f(model) {
        return Some(v);
    }
    let lower = model.to_ascii_lowercase();
    let unprefixed = lower.rsplit('/').next().unwrap_or(&lower);
    let found = [
        Some(lower.as_str()),
        Some(unprefixed),
        strip_date(unprefixed),
    ]
    .into_iter()
    .flatten()
    .find_map(f);
    found
}

/// Strip a trailing date such as `-20250929`, `@20250929` or `-2024-08-06`.
fn strip_date(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b.len() > 9 && matches!(b[b.len() - 9], b'-' | b'@') && digits(&b[b.len() - 8..]) {
        return Some(&name[..name.len() - 9]);
    }
    if b.len() > 11 {
        let t = &b[b.len() - 11..];
        if t[0] == b'-'
            && digits(&t[1..5])
            && t[5] == b'-'
            && digits(&t[6..8])
            && t[8] == b'-'
            && digits(&t[9..11])
        {
            return Some(&name[..name.len() - 11]);
        }
    }
    None
}

impl PriceBook {
    /// A book with no models, pricing in `currency`.
    pub fn empty(currency: Currency) -> Self {
        Self {
            currency,
            catalog: HashMap::default(),
            aliases: HashMap::default(),
            overrides: HashMap::default(),
            multipliers: Vec::new(),
            global_multiplier: Decimal::ONE,
            default_price: None,
            live: LiveOverrides::default(),
        }
    }

    /// The live overrides (admin changes while running): they apply to [`cost`](Self::cost)
    /// at once, in every holder of this book and its clones, ahead of everything else.
    /// [`lookup`](Self::lookup) shows the configured prices only.
    pub fn live(&self) -> &LiveOverrides {
        &self.live
    }

    /// The currency costs are in.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Number of models in the catalog (overrides not counted).
    pub fn len(&self) -> usize {
        self.catalog.len()
    }

    /// True when the catalog holds no model.
    pub fn is_empty(&self) -> bool {
        self.catalog.is_empty()
    }

    /// Add or replace a catalog entry.
    pub fn insert(
        &mut self,
        model: impl Into<String>,
        price: ModelPrice,
    ) -> Result<(), PriceError> {
        let model = model.into();
        price.check(&model)?;
        self.catalog.insert(model, Arc::new(price));
        Ok(())
    }

    /// Build the alias table after loading: undated and lower-case names of first-party
    /// entries point at the newest dated entry.
    fn index_aliases(&mut self) {
        let mut names: Vec<&String> = self.catalog.keys().filter(|k| !k.contains('/')).collect();
        names.sort();
        let mut aliases = HashMap::default();
        for name in names {
            if let Some(base) = strip_date(name) {
                if !self.catalog.contains_key(base) {
                    // Sorted ascending, so the newest date wins.
                    aliases.insert(base.to_owned(), name.clone());
                }
            }
            let lower = name.to_ascii_lowercase();
            if lower != *name && !self.catalog.contains_key(&lower) {
                aliases.insert(lower, name.clone());
            }
        }
        self.aliases = aliases;
    }

    /// Operator override: `price` for `model`, ahead of the catalog.
    pub fn with_override(
        mut self,
        model: impl Into<String>,
        price: ModelPrice,
    ) -> Result<Self, PriceError> {
        let model = model.into();
        price.check(&model)?;
        self.overrides.insert(model, Arc::new(price));
        Ok(self)
    }

    /// Operator multiplier for models matching `pattern` (a name, or a prefix ending in
    /// `*`). The first matching pattern applies, times the global multiplier.
    pub fn with_model_multiplier(
        mut self,
        pattern: impl Into<String>,
        multiplier: Decimal,
    ) -> Result<Self, PriceError> {
        let pattern = pattern.into();
        if multiplier.is_sign_negative() && !multiplier.is_zero() {
            return Err(PriceError::Negative(format!("multiplier for `{pattern}`")));
        }
        self.multipliers.push((pattern, multiplier));
        Ok(self)
    }

    /// Operator multiplier applied to every cost.
    pub fn with_multiplier(mut self, multiplier: Decimal) -> Result<Self, PriceError> {
        if multiplier.is_sign_negative() && !multiplier.is_zero() {
            return Err(PriceError::Negative("global multiplier".into()));
        }
        self.global_multiplier = multiplier;
        Ok(self)
    }

    /// Price used for models the book does not know. Without one, unknown models are an
    /// error ([`PriceError::UnknownModel`]), never free.
    pub fn with_default_price(mut self, price: ModelPrice) -> Result<Self, PriceError> {
        price.check("the default price")?;
        self.default_price = Some(Arc::new(price));
        Ok(self)
    }

    fn find(&self, name: &str) -> Option<&Arc<ModelPrice>> {
        if let Some(p) = self.overrides.get(name) {
            return Some(p);
        }
        if let Some(p) = self.catalog.get(name) {
            return Some(p);
        }
        self.aliases
            .get(name)
            .and_then(|full| self.catalog.get(full))
    }

    /// The price of `model`: an override, the catalog entry, the entry under its undated or
    /// unprefixed name, or the configured default.
    pub fn lookup(&self, model: &str) -> Result<&ModelPrice, PriceError> {
        let model = model.trim();
        if let Some(p) = each_name(model, |name| self.find(name)) {
            return Ok(p);
        }
        self.default_price
            .as_deref()
            .ok_or_else(|| PriceError::UnknownModel(model.chars().take(128).collect()))
    }

    /// The multiplier operators set for `model`.
    pub fn multiplier(&self, model: &str) -> Decimal {
        let specific = self
            .multipliers
            .iter()
            .find(|(p, _)| model_matches(p, model))
            .map_or(Decimal::ONE, |(_, m)| *m);
        specific * self.global_multiplier
    }

    /// The exact cost of `usage` on `model`, multipliers included. Never rounded: rounding
    /// to the currency's minor unit happens once, on the invoice.
    pub fn cost(&self, model: &str, usage: &Usage) -> Result<Money, PriceError> {
        let live = self.live.load();
        // Without live overrides (the usual case) this is the one extra step: a load.
        let raw = match (!live.is_empty())
            .then(|| each_name(model.trim(), |name| live.get(name)))
            .flatten()
        {
            Some(p) => p.cost(usage)?,
            None => self.lookup(model)?.cost(usage)?,
        };
        let amount = raw
            .checked_mul(self.multiplier(model))
            .ok_or(PriceError::Money(MoneyError::Overflow))?;
        Ok(Money::new(amount, self.currency))
    }
}

#[cfg(test)]
mod tests;
