//! Batched last-use writes: the hot path records a use in memory; a flush writes one row
//! update per key used since the last flush, not one write per request.

use chrono::{DateTime, TimeZone, Utc};
use dashmap::DashMap;
use relay_core::ApiKeyId;

use crate::model::KeyUse;

#[derive(Debug)]
struct Pending {
    key_id: ApiKeyId,
    first_ms: i64,
    last_ms: i64,
}

/// Uses recorded since the last flush, by key hash.
#[derive(Debug, Default)]
pub(crate) struct UseBuffer {
    pending: DashMap<[u8; 32], Pending>,
}

impl UseBuffer {
    pub(crate) fn record(&self, hash: &[u8; 32], key_id: &ApiKeyId, now_ms: i64) {
        if let Some(mut p) = self.pending.get_mut(hash) {
            p.last_ms = p.last_ms.max(now_ms);
            p.first_ms = p.first_ms.min(now_ms);
            return;
        }
        self.pending
            .entry(*hash)
            .and_modify(|p| p.last_ms = p.last_ms.max(now_ms))
            .or_insert_with(|| Pending {
                key_id: key_id.clone(),
                first_ms: now_ms,
                last_ms: now_ms,
            });
    }

    /// Take everything pending.
    pub(crate) fn drain(&self) -> Vec<KeyUse> {
        let hashes: Vec<[u8; 32]> = self.pending.iter().map(|e| *e.key()).collect();
        hashes
            .into_iter()
            .filter_map(|h| self.pending.remove(&h))
            .filter_map(|(_, p)| {
                Some(KeyUse {
                    key_id: p.key_id,
                    first: time(p.first_ms)?,
                    last: time(p.last_ms)?,
                })
            })
            .collect()
    }

    /// Put back uses whose flush failed.
    pub(crate) fn restore(&self, uses: Vec<KeyUse>) {
        for u in uses {
            // Not the key's HMAC (unknown here): a separate slot for the same key is fine,
            // the store merges uses with min/max.
            let h = crate::secret::sha256(u.key_id.as_str());
            self.record(&h, &u.key_id, u.first.timestamp_millis());
            self.record(&h, &u.key_id, u.last.timestamp_millis());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

fn time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}
