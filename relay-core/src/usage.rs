//! Token usage of one request or of many.

use serde::{Deserialize, Serialize};

/// Tokens consumed, by kind, as upstream APIs report them.
///
/// `input_tokens` counts only uncached prompt tokens; cache writes and reads are counted
/// separately because they are priced differently (Anthropic's convention; OpenAI's and
/// Gemini's reports are translated into it by the metering parsers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Uncached prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens (reasoning included).
    pub output_tokens: u64,
    /// Prompt tokens written to a cache that lives 5 minutes.
    pub cache_write_5m_tokens: u64,
    /// Prompt tokens written to a cache that lives 1 hour.
    pub cache_write_1h_tokens: u64,
    /// Prompt tokens served from a cache.
    pub cache_read_tokens: u64,
    /// Number of requests this usage covers.
    pub requests: u64,
}

impl Usage {
    /// Every prompt token: uncached, written to and read from a cache. This is the count
    /// long-context price tiers compare with their threshold.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_write_5m_tokens)
            .saturating_add(self.cache_write_1h_tokens)
            .saturating_add(self.cache_read_tokens)
    }

    /// Prompt and output tokens together.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.output_tokens)
    }

    /// Add another usage into this one (saturating: counters never wrap).
    pub fn accumulate(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_write_5m_tokens = self
            .cache_write_5m_tokens
            .saturating_add(other.cache_write_5m_tokens);
        self.cache_write_1h_tokens = self
            .cache_write_1h_tokens
            .saturating_add(other.cache_write_1h_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.requests = self.requests.saturating_add(other.requests);
    }

    /// True when no token and no request is counted.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_accumulation() {
        let mut a = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_write_5m_tokens: 3,
            cache_write_1h_tokens: 2,
            cache_read_tokens: 100,
            requests: 1,
        };
        assert_eq!(a.prompt_tokens(), 115);
        assert_eq!(a.total_tokens(), 120);
        let b = a;
        a.accumulate(&b);
        assert_eq!(a.total_tokens(), 240);
        assert_eq!(a.requests, 2);
        let mut max = Usage {
            input_tokens: u64::MAX,
            ..Usage::default()
        };
        max.accumulate(&b);
        assert_eq!(max.input_tokens, u64::MAX);
        assert!(Usage::default().is_empty());
    }
}
