//! A key's own limits: a narrowing of its plan's policy chosen by the key's owner.
//!
//! The plan's policy is the entitlement; [`KeyLimits`] can only take away from it. They are
//! stored beside the key's effective policy and re-applied with [`KeyLimits::apply`]
//! whenever the plan's policy is applied again (renewal, plan change), so a renewal keeps a
//! key's narrowing and a downgrade clamps it to the new plan.

use relay_core::policy::model_matches;
use relay_core::{Budget, KeyPolicy, Money, RateWindow};
use serde::{Deserialize, Serialize};

/// The most model patterns a key may list.
pub const MAX_MODEL_PATTERNS: usize = 64;

/// Limits a key's owner sets on one key, within the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Only these models (patterns; `*` at the end matches any suffix). Empty: the plan's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
    /// At most this many requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Rate windows: lower caps for the plan's windows, or extra windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_windows: Vec<RateWindow>,
    /// Budgets: lower caps for the plan's periods, or extra periods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
}

/// Why limits are not acceptable: the field (as sent) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct LimitsError {
    /// Which field, e.g. `limits.concurrency` or `limits.rate_windows[0].max_requests`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> Result<(), LimitsError> {
    Err(LimitsError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Does one of `patterns` match every model `pattern` matches?
pub fn covered(patterns: &[String], pattern: &str) -> bool {
    patterns.iter().any(|p| {
        p == pattern || (p.ends_with('*') && model_matches(p, pattern.trim_end_matches('*')))
    })
}

fn min_count(plan: Option<u64>, own: Option<u64>) -> Option<u64> {
    match (plan, own) {
        (Some(p), Some(o)) => Some(p.min(o)),
        (p, o) => p.or(o),
    }
}

/// The lower of two caps; an own cap in another currency than the policy's is ignored
/// (it cannot be compared, and the plan's currency wins).
fn min_money(
    plan: Option<&Money>,
    own: Option<&Money>,
    currency: relay_core::Currency,
) -> Option<Money> {
    let own = own.filter(|o| o.currency() == currency);
    match (plan, own) {
        (Some(p), Some(o)) => Some(if o.checked_cmp(p).is_ok_and(|c| c.is_lt()) {
            *o
        } else {
            *p
        }),
        (p, o) => p.or(o).cloned(),
    }
}

impl KeyLimits {
    /// True when the limits narrow nothing.
    pub fn is_empty(&self) -> bool {
        self == &KeyLimits::default()
    }

    /// The effective policy: `plan` narrowed by these limits. Never grants more than
    /// `plan`: each cap is the lower of the two, extra windows and budgets are added,
    /// models are the intersection (none left: every model is denied).
    pub fn apply(&self, plan: &KeyPolicy) -> KeyPolicy {
        let mut p = plan.clone();
        if let Some(c) = self.concurrency {
            p.concurrency = Some(p.concurrency.map_or(c, |pc| pc.min(c)));
        }
        for w in &self.rate_windows {
            match p
                .rate_windows
                .iter_mut()
                .find(|pw| pw.window_secs == w.window_secs)
            {
                Some(pw) => {
                    pw.max_requests = min_count(pw.max_requests, w.max_requests);
                    pw.max_tokens = min_count(pw.max_tokens, w.max_tokens);
                    pw.max_cost =
                        min_money(pw.max_cost.as_ref(), w.max_cost.as_ref(), plan.currency);
                }
                None => {
                    let mut extra = w.clone();
                    extra.max_cost = min_money(None, w.max_cost.as_ref(), plan.currency);
                    if extra.max_requests.is_some()
                        || extra.max_tokens.is_some()
                        || extra.max_cost.is_some()
                    {
                        p.rate_windows.push(extra);
                    }
                }
            }
        }
        for b in self
            .budgets
            .iter()
            .filter(|b| b.cap.currency() == plan.currency)
        {
            match p.budgets.iter_mut().find(|pb| pb.period == b.period) {
                Some(pb) => {
                    if let Some(cap) = min_money(Some(&pb.cap), Some(&b.cap), plan.currency) {
                        pb.cap = cap;
                    }
                }
                None => p.budgets.push(b.clone()),
            }
        }
        if !self.allowed_models.is_empty() {
            let mut models: Vec<String> = Vec::new();
            for own in &self.allowed_models {
                let picked: Vec<&String> =
                    if plan.allowed_models.is_empty() || covered(&plan.allowed_models, own) {
                        vec![own]
                    } else {
                        // The plan is narrower here: keep its patterns that fall inside ours.
                        plan.allowed_models
                            .iter()
                            .filter(|pp| covered(std::slice::from_ref(own), pp))
                            .collect()
                    };
                for m in picked {
                    let denied = plan
                        .denied_models
                        .iter()
                        .any(|d| covered(std::slice::from_ref(d), m));
                    if !denied && !models.contains(m) {
                        models.push(m.clone());
                    }
                }
            }
            if models.is_empty() {
                // Nothing of ours is left in the plan: an empty allow-list would mean
                // "any model", so deny them all instead.
                p.allowed_models.clear();
                p.denied_models = vec!["*".into()];
            } else {
                p.allowed_models = models;
            }
        }
        p
    }

    /// Check that these limits are well-formed and no wider than `plan`; the error names
    /// the field (prefixed `limits.`).
    pub fn check_within(&self, plan: &KeyPolicy) -> Result<(), LimitsError> {
        if self.allowed_models.len() > MAX_MODEL_PATTERNS {
            return err(
                "limits.allowed_models",
                format!("at most {MAX_MODEL_PATTERNS} model patterns"),
            );
        }
        for (i, m) in self.allowed_models.iter().enumerate() {
            let field = format!("limits.allowed_models[{i}]");
            if m.trim().is_empty() || m.len() > 128 || m.chars().any(char::is_control) {
                return err(field, "a model pattern is 1 to 128 printable characters");
            }
            if !plan.allowed_models.is_empty() && !covered(&plan.allowed_models, m) {
                return err(field, format!("`{m}` is not among the plan's models"));
            }
            if plan
                .denied_models
                .iter()
                .any(|d| covered(std::slice::from_ref(d), m))
            {
                return err(field, format!("`{m}` is denied by the plan"));
            }
        }
        if let Some(c) = self.concurrency {
            if c == 0 {
                return err("limits.concurrency", "concurrency must be at least 1");
            }
            if plan.concurrency.is_some_and(|p| c > p) {
                return err(
                    "limits.concurrency",
                    format!("the plan allows at most {}", plan.concurrency.unwrap_or(c)),
                );
            }
        }
        for (i, w) in self.rate_windows.iter().enumerate() {
            let field = |f: &str| format!("limits.rate_windows[{i}].{f}");
            if w.window_secs == 0 {
                return err(field("window_secs"), "a window is at least 1 second long");
            }
            if self.rate_windows[..i]
                .iter()
                .any(|o| o.window_secs == w.window_secs)
            {
                return err(field("window_secs"), "each window length at most once");
            }
            if w.max_requests.is_none() && w.max_tokens.is_none() && w.max_cost.is_none() {
                return err(field("max_requests"), "set at least one cap");
            }
            let pw = plan
                .rate_windows
                .iter()
                .find(|p| p.window_secs == w.window_secs);
            for (name, own, theirs) in [
                (
                    "max_requests",
                    w.max_requests,
                    pw.and_then(|p| p.max_requests),
                ),
                ("max_tokens", w.max_tokens, pw.and_then(|p| p.max_tokens)),
            ] {
                if own == Some(0) {
                    return err(field(name), "a cap is at least 1");
                }
                if let (Some(o), Some(t)) = (own, theirs) {
                    if o > t {
                        return err(field(name), format!("the plan allows at most {t}"));
                    }
                }
            }
            if let Some(cost) = &w.max_cost {
                check_money(
                    &field("max_cost"),
                    cost,
                    pw.and_then(|p| p.max_cost.as_ref()),
                    plan,
                )?;
            }
        }
        for (i, b) in self.budgets.iter().enumerate() {
            let field = format!("limits.budgets[{i}].cap");
            if self.budgets[..i].iter().any(|o| o.period == b.period) {
                return err(
                    format!("limits.budgets[{i}].period"),
                    "each period at most once",
                );
            }
            let theirs = plan
                .budgets
                .iter()
                .find(|p| p.period == b.period)
                .map(|p| &p.cap);
            check_money(&field, &b.cap, theirs, plan)?;
        }
        if let Err(e) = self.apply(plan).validate() {
            return err("limits", e.to_string());
        }
        Ok(())
    }
}

fn check_money(
    field: &str,
    own: &Money,
    theirs: Option<&Money>,
    plan: &KeyPolicy,
) -> Result<(), LimitsError> {
    if own.currency() != plan.currency {
        return err(
            field,
            format!("caps are in the plan's currency, {}", plan.currency.code()),
        );
    }
    if own.amount() <= rust_decimal::Decimal::ZERO {
        return err(field, "a cap is more than 0");
    }
    if let Some(t) = theirs {
        if own.checked_cmp(t).is_ok_and(|c| c.is_gt()) {
            return err(field, format!("the plan allows at most {}", t.amount()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::{BudgetPeriod, Currency};
    use rust_decimal::Decimal;

    fn usd(n: i64) -> Money {
        Money::new(Decimal::from(n), Currency::USD)
    }

    fn plan() -> KeyPolicy {
        KeyPolicy {
            concurrency: Some(4),
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(100),
                max_tokens: None,
                max_cost: None,
            }],
            budgets: vec![Budget {
                period: BudgetPeriod::Monthly,
                cap: usd(50),
            }],
            allowed_models: vec!["claude-*".into(), "gpt-4o".into()],
            ..KeyPolicy::default()
        }
    }

    #[test]
    fn narrowing_takes_the_lower_of_each() {
        let own = KeyLimits {
            allowed_models: vec!["claude-haiku-*".into()],
            concurrency: Some(2),
            rate_windows: vec![RateWindow {
                window_secs: 60,
                max_requests: Some(10),
                max_tokens: Some(5000),
                max_cost: None,
            }],
            budgets: vec![Budget {
                period: BudgetPeriod::Daily,
                cap: usd(3),
            }],
        };
        own.check_within(&plan()).unwrap();
        let p = own.apply(&plan());
        assert_eq!(p.concurrency, Some(2));
        assert_eq!(p.rate_windows[0].max_requests, Some(10));
        assert_eq!(p.rate_windows[0].max_tokens, Some(5000));
        assert_eq!(p.budgets.len(), 2);
        assert_eq!(p.allowed_models, vec!["claude-haiku-*".to_owned()]);
        p.validate().unwrap();
    }

    #[test]
    fn a_smaller_plan_clamps_and_disjoint_models_deny_all() {
        let own = KeyLimits {
            allowed_models: vec!["gpt-4o".into()],
            concurrency: Some(3),
            ..KeyLimits::default()
        };
        let small = KeyPolicy {
            concurrency: Some(1),
            allowed_models: vec!["claude-*".into()],
            ..KeyPolicy::default()
        };
        let p = own.apply(&small);
        assert_eq!(p.concurrency, Some(1));
        assert!(!p.allows_model("gpt-4o"));
        assert!(!p.allows_model("claude-haiku-4"));
        p.validate().unwrap();
        // A wider own pattern than the plan keeps the plan's narrower one.
        let wide = KeyLimits {
            allowed_models: vec!["claude-*".into()],
            ..KeyLimits::default()
        };
        let narrow_plan = KeyPolicy {
            allowed_models: vec!["claude-haiku-*".into()],
            ..KeyPolicy::default()
        };
        assert_eq!(
            wide.apply(&narrow_plan).allowed_models,
            vec!["claude-haiku-*".to_owned()]
        );
    }

    #[test]
    fn wider_than_the_plan_names_the_field() {
        let cases = [
            (
                KeyLimits {
                    concurrency: Some(5),
                    ..KeyLimits::default()
                },
                "limits.concurrency",
            ),
            (
                KeyLimits {
                    allowed_models: vec!["gemini-*".into()],
                    ..KeyLimits::default()
                },
                "limits.allowed_models[0]",
            ),
            (
                KeyLimits {
                    rate_windows: vec![RateWindow {
                        window_secs: 60,
                        max_requests: Some(101),
                        max_tokens: None,
                        max_cost: None,
                    }],
                    ..KeyLimits::default()
                },
                "limits.rate_windows[0].max_requests",
            ),
            (
                KeyLimits {
                    budgets: vec![Budget {
                        period: BudgetPeriod::Monthly,
                        cap: usd(51),
                    }],
                    ..KeyLimits::default()
                },
                "limits.budgets[0].cap",
            ),
            (
                KeyLimits {
                    budgets: vec![Budget {
                        period: BudgetPeriod::Daily,
                        cap: Money::new(Decimal::ONE, Currency::EUR),
                    }],
                    ..KeyLimits::default()
                },
                "limits.budgets[0].cap",
            ),
            (
                KeyLimits {
                    concurrency: Some(0),
                    ..KeyLimits::default()
                },
                "limits.concurrency",
            ),
        ];
        for (limits, field) in cases {
            assert_eq!(limits.check_within(&plan()).unwrap_err().field, field);
        }
    }
}
