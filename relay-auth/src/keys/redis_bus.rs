//! Cross-instance key-cache invalidation over Redis pub/sub (feature `redis`).
//!
//! Every instance subscribes to one channel and publishes its invalidations there; each
//! message drops the named key, user or everything from the receiver's [`KeyCache`]. When
//! the subscription drops, messages may have been missed, so the subscriber clears its
//! whole cache before resubscribing: a lost connection costs cache misses, never a stale
//! revoked key beyond the TTL.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::{Invalidation, InvalidationBus, KeyCache};
use crate::error::AuthError;

/// Publishes invalidations to, and applies them from, a Redis channel.
#[derive(Clone)]
pub struct RedisKeyBus {
    conn: ConnectionManager,
    channel: String,
    origin: String,
}

impl std::fmt::Debug for RedisKeyBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeyBus")
            .field("channel", &self.channel)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

#[allow(clippy::needless_pass_by_value)] // shaped for map_err
fn redis_err(e: redis::RedisError) -> AuthError {
    AuthError::Unavailable(format!("redis: {e}"))
}

impl RedisKeyBus {
    /// Connect to `url`, subscribe `cache` to `channel`, and return the bus to hand to
    /// [`ApiKeyService::with_bus`](super::ApiKeyService::with_bus) with the subscriber
    /// task. The subscription is live when this returns.
    pub async fn start(
        url: &str,
        channel: &str,
        cache: KeyCache,
    ) -> Result<(Arc<RedisKeyBus>, tokio::task::JoinHandle<()>), AuthError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(redis_err)?;
        let origin = hex::encode(crate::secret::random_bytes::<8>());
        let mut pubsub = client.get_async_pubsub().await.map_err(redis_err)?;
        pubsub.subscribe(channel).await.map_err(redis_err)?;
        let bus = Arc::new(RedisKeyBus {
            conn,
            channel: channel.to_owned(),
            origin: origin.clone(),
        });
        let channel = channel.to_owned();
        let task = tokio::spawn(async move {
            let mut first = Some(pubsub);
            loop {
                let pubsub = match first.take() {
                    Some(p) => p,
                    None => match resubscribe(&client, &channel).await {
                        Some(p) => p,
                        None => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                };
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let Some((from, body)) = payload.split_once(' ') else {
                        continue;
                    };
                    if from == origin {
                        continue;
                    }
                    if let Some(what) = Invalidation::decode(body) {
                        cache.invalidate(&what);
                    }
                }
                tracing::warn!(
                    "key invalidation subscription lost; clearing cache and resubscribing"
                );
                cache.invalidate(&Invalidation::All);
            }
        });
        Ok((bus, task))
    }
}

async fn resubscribe(client: &redis::Client, channel: &str) -> Option<redis::aio::PubSub> {
    let mut p = client.get_async_pubsub().await.ok()?;
    p.subscribe(channel).await.ok()?;
    Some(p)
}

impl InvalidationBus for RedisKeyBus {
    fn publish(&self, what: &Invalidation) {
        let mut conn = self.conn.clone();
        let channel = self.channel.clone();
        let payload = format!("{} {}", self.origin, what.encode());
        tokio::spawn(async move {
            if let Err(e) = conn.publish::<_, _, ()>(&channel, payload).await {
                tracing::warn!(error = %e, "publishing key invalidation failed");
            }
        });
    }
}
