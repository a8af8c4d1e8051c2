//! [`Throttle`] for attempt counting (logins, resets, TOTP codes), in memory and in Redis.
//!
//! A sliding log: each key keeps the instants of its last `max` admitted attempts, so the
//! limit is exact over any window and memory per key is bounded by `max` (attempt limits are
//! small, typically 5 to 20). In memory, keys whose attempts have all aged out are dropped
//! on the next sweep; in Redis ([`RedisThrottle`], feature `redis`) each key is a sorted set
//! that expires with its window, and each attempt is one `EVALSHA`, so several instances
//! share one lockout.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use relay_core::{SharedClock, Throttle, ThrottleDecision, ThrottleError};

/// In-memory [`Throttle`]; clones are not shared, wrap it in an `Arc`.
#[derive(Debug)]
pub struct MemoryThrottle {
    clock: SharedClock,
    attempts: DashMap<String, VecDeque<i64>>,
}

impl MemoryThrottle {
    /// A throttle reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            attempts: DashMap::new(),
        }
    }

    /// Drop keys with no attempt inside `window` (call periodically).
    pub fn sweep(&self, window: Duration) {
        let horizon = self.clock.now_millis() - millis(window);
        self.attempts
            .retain(|_, log| log.back().is_some_and(|&t| t > horizon));
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.attempts.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl Throttle for MemoryThrottle {
    async fn attempt(
        &self,
        key: &str,
        max: u32,
        window: Duration,
    ) -> Result<ThrottleDecision, ThrottleError> {
        let now = self.clock.now_millis();
        let window_ms = millis(window);
        let mut log = self.attempts.entry(key.to_owned()).or_default();
        while log.front().is_some_and(|&t| t <= now - window_ms) {
            log.pop_front();
        }
        let max_len = usize::try_from(max).unwrap_or(usize::MAX);
        if log.len() >= max_len {
            let oldest = log.front().copied().unwrap_or(now);
            let wait = (oldest + window_ms - now).max(1);
            return Ok(ThrottleDecision::Limited {
                retry_after: Duration::from_millis(u64::try_from(wait).unwrap_or(1)),
            });
        }
        log.push_back(now);
        let remaining = u32::try_from(max_len - log.len()).unwrap_or(0);
        Ok(ThrottleDecision::Allowed { remaining })
    }

    async fn reset(&self, key: &str) -> Result<(), ThrottleError> {
        self.attempts.remove(key);
        Ok(())
    }
}

/// [`Throttle`] shared by every instance through Redis.
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisThrottle {
    conn: redis::aio::ConnectionManager,
    clock: SharedClock,
    prefix: std::sync::Arc<str>,
    script: std::sync::Arc<redis::Script>,
    timeout: Duration,
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisThrottle")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisThrottle {
    /// A throttle on an open connection, keys under `{prefix}:th:`.
    pub fn new(conn: redis::aio::ConnectionManager, clock: SharedClock, prefix: &str) -> Self {
        Self {
            conn,
            clock,
            prefix: std::sync::Arc::from(prefix),
            script: std::sync::Arc::new(redis::Script::new(include_str!("throttle_redis.lua"))),
            timeout: Duration::from_millis(250),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:th:{{{key}}}", self.prefix)
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl Throttle for RedisThrottle {
    async fn attempt(
        &self,
        key: &str,
        max: u32,
        window: Duration,
    ) -> Result<ThrottleDecision, ThrottleError> {
        let now = self.clock.now_millis();
        let member = relay_core::RequestId::new();
        let mut inv = self.script.prepare_invoke();
        inv.key(self.key(key))
            .arg(now)
            .arg(millis(window))
            .arg(max)
            .arg(member.as_str());
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| ThrottleError::Unavailable("redis timeout".into()))?
            .map_err(|e| ThrottleError::Unavailable(e.to_string()))?;
        let value = reply.get(1).copied().unwrap_or(0);
        Ok(if reply.first() == Some(&1) {
            ThrottleDecision::Allowed {
                remaining: u32::try_from(value).unwrap_or(0),
            }
        } else {
            ThrottleDecision::Limited {
                retry_after: Duration::from_millis(u64::try_from(value).unwrap_or(1)),
            }
        })
    }

    async fn reset(&self, key: &str) -> Result<(), ThrottleError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(key))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| ThrottleError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use relay_core::ManualClock;
    use std::sync::Arc;

    #[tokio::test]
    async fn limits_over_a_sliding_window_and_resets() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        let t = MemoryThrottle::new(Arc::new(clock.clone()));
        let w = Duration::from_secs(60);
        for left in (0..3).rev() {
            assert_eq!(
                t.attempt("login:a", 3, w).await.unwrap(),
                ThrottleDecision::Allowed { remaining: left }
            );
        }
        clock.advance(chrono::Duration::seconds(20));
        assert_eq!(
            t.attempt("login:a", 3, w).await.unwrap(),
            ThrottleDecision::Limited {
                retry_after: Duration::from_secs(40)
            }
        );
        // Other keys are independent.
        assert!(t.attempt("login:b", 3, w).await.unwrap().is_allowed());
        // Limited attempts are not counted: after the window, the first slot frees.
        clock.advance(chrono::Duration::seconds(40));
        assert!(t.attempt("login:a", 3, w).await.unwrap().is_allowed());
        t.reset("login:a").await.unwrap();
        assert_eq!(
            t.attempt("login:a", 3, w).await.unwrap(),
            ThrottleDecision::Allowed { remaining: 2 }
        );
        clock.advance(chrono::Duration::seconds(61));
        t.sweep(w);
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn concurrent_attempts_never_exceed_the_limit() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
        let t = Arc::new(MemoryThrottle::new(Arc::new(clock)));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                t.attempt("k", 10, Duration::from_secs(60))
                    .await
                    .unwrap()
                    .is_allowed()
            }));
        }
        let mut allowed = 0;
        for task in tasks {
            allowed += usize::from(task.await.unwrap());
        }
        assert_eq!(allowed, 10);
    }
}
