//! Reading LiteLLM's `model_prices_and_context_window.json` format.
//!
//! Each number is taken from its JSON text (serde_json's `RawValue`) and parsed as a
//! decimal, so the loader never sees a float.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::{ModelPrice, PriceBook, PriceError, PriceTier, TokenPrices};
use crate::money::Currency;

/// A catalog entry that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    /// The entry's key.
    pub model: String,
    /// Why it was skipped.
    pub reason: String,
}

type Fields<'a> = HashMap<String, &'a RawValue>;

fn decimal(fields: &Fields<'_>, key: &str) -> Result<Option<Decimal>, String> {
    let Some(raw) = fields.get(key) else {
        return Ok(None);
    };
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    let value = Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| {
            format!(
                "{key} is not a number: {}",
                text.chars().take(40).collect::<String>()
            )
        })?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{key} is negative"));
    }
    Ok(Some(value.normalize()))
}

/// Modes whose entries carry no generated tokens; a missing output price is zero for them.
const INPUT_ONLY_MODES: &[&str] = &["embedding", "moderation", "rerank"];

fn tier_thresholds(fields: &Fields<'_>) -> Vec<u64> {
    let mut out: Vec<u64> = fields
        .keys()
        .filter_map(|k| {
            let n = k
                .strip_prefix("input_cost_per_token_above_")?
                .strip_suffix("k_tokens")?;
            n.parse::<u64>().ok().map(|k| k * 1000)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn cache_prices(
    fields: &Fields<'_>,
    suffix: &str,
    input: Decimal,
    output: Decimal,
) -> Result<TokenPrices, String> {
    let fallback = TokenPrices::per_token(input, output);
    Ok(TokenPrices {
        input,
        output,
        cache_write_5m: decimal(fields, &format!("cache_creation_input_token_cost{suffix}"))?
            .unwrap_or(fallback.cache_write_5m),
        cache_write_1h: decimal(
            fields,
            &format!("cache_creation_input_token_cost_above_1hr{suffix}"),
        )?
        .unwrap_or(fallback.cache_write_1h),
        cache_read: decimal(fields, &format!("cache_read_input_token_cost{suffix}"))?
            .unwrap_or(fallback.cache_read),
    })
}

fn parse_entry(fields: &Fields<'_>) -> Result<ModelPrice, String> {
    let provider = fields
        .get("litellm_provider")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    let mode = fields
        .get("mode")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    let input = decimal(fields, "input_cost_per_token")?.ok_or_else(|| {
        format!(
            "no per-token price (input_cost_per_token missing; mode {})",
            mode.as_deref().unwrap_or("unknown")
        )
    })?;
    let output = match decimal(fields, "output_cost_per_token")? {
        Some(o) => o,
        None if mode
            .as_deref()
            .is_some_and(|m| INPUT_ONLY_MODES.contains(&m)) =>
        {
            Decimal::ZERO
        }
        None => return Err("output_cost_per_token missing".to_owned()),
    };
    let base = cache_prices(fields, "", input, output)?;
    let mut tiers = Vec::new();
    for threshold in tier_thresholds(fields) {
        let suffix = format!("_above_{}k_tokens", threshold / 1000);
        let Some(tier_input) = decimal(fields, &format!("input_cost_per_token{suffix}"))? else {
            continue;
        };
        let tier_output =
            decimal(fields, &format!("output_cost_per_token{suffix}"))?.unwrap_or(output);
        let mut prices = cache_prices(fields, &suffix, tier_input, tier_output)?;
        // LiteLLM spells the 1-hour write of a tier `..._above_1hr_above_200k_tokens`.
        if let Some(p) = decimal(
            fields,
            &format!("cache_creation_input_token_cost_above_1hr{suffix}"),
        )? {
            prices.cache_write_1h = p;
        }
        tiers.push(PriceTier {
            above_prompt_tokens: threshold,
            prices,
        });
    }
    Ok(ModelPrice {
        base,
        tiers,
        provider,
    })
}

impl PriceBook {
    /// Load a catalog in LiteLLM's JSON format. Entries that cannot be priced per token
    /// (image and audio models, the `sample_spec` documentation entry, malformed numbers)
    /// are returned with their reason instead of failing the whole load.
    pub fn from_litellm_json(json: &str) -> Result<(PriceBook, Vec<SkippedEntry>), PriceError> {
        let entries: BTreeMap<String, &RawValue> =
            serde_json::from_str(json).map_err(|e| PriceError::Catalog(e.to_string()))?;
        let mut book = PriceBook::empty(Currency::USD);
        let mut skipped = Vec::new();
        for (model, raw) in entries {
            if model == "sample_spec" {
                skipped.push(SkippedEntry {
                    model,
                    reason: "documentation of the format, not a model".into(),
                });
                continue;
            }
            let fields: Fields<'_> = match serde_json::from_str(raw.get()) {
                Ok(f) => f,
                Err(_) => {
                    skipped.push(SkippedEntry {
                        model,
                        reason: "entry is not a JSON object".into(),
                    });
                    continue;
                }
            };
            match parse_entry(&fields) {
                Ok(price) => {
                    book.catalog.insert(model, std::sync::Arc::new(price));
                }
                Err(reason) => skipped.push(SkippedEntry { model, reason }),
            }
        }
        book.index_aliases();
        Ok((book, skipped))
    }

    /// Load a LiteLLM catalog from a file.
    pub fn load_litellm_file(
        path: impl AsRef<Path>,
    ) -> Result<(PriceBook, Vec<SkippedEntry>), PriceError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| PriceError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_litellm_json(&text)
    }
}
