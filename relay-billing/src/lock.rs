//! Leader locks for jobs: one instance runs a job at a time.
//!
//! On PostgreSQL the lock is a session advisory lock (`pg_try_advisory_lock`) held on a
//! dedicated connection, so it is shared by every instance using the database and dies
//! with a crashed instance's connection. On SQLite (one file, one process writing) a
//! process-local set of held job names is enough.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;

/// Proof that this instance runs a job. Release it with [`JobLock::release`]; dropping
/// it also releases (a PostgreSQL lock by closing its connection).
#[derive(Debug)]
pub struct JobLock {
    inner: Inner,
}

#[derive(Debug)]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
enum Inner {
    Local {
        held: Arc<Mutex<HashSet<String>>>,
        name: String,
    },
    #[cfg(feature = "postgres")]
    Postgres {
        conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
        key: i64,
    },
}

impl JobLock {
    /// Take the process-local lock `name` from `held`, unless someone holds it.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn try_local(held: &Arc<Mutex<HashSet<String>>>, name: &str) -> Option<JobLock> {
        let mut set = held.lock();
        if set.insert(name.to_owned()) {
            Some(JobLock {
                inner: Inner::Local {
                    held: Arc::clone(held),
                    name: name.to_owned(),
                },
            })
        } else {
            None
        }
    }

    /// A held PostgreSQL advisory lock on `conn`.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(conn: sqlx::pool::PoolConnection<sqlx::Any>, key: i64) -> JobLock {
        JobLock {
            inner: Inner::Postgres {
                conn: Some(conn),
                key,
            },
        }
    }

    /// Release the lock.
    pub async fn release(mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Local { .. } => Ok(()), // Drop removes the name.
            #[cfg(feature = "postgres")]
            Inner::Postgres { conn, key } => {
                if let Some(mut c) = conn.take() {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(*key)
                        .execute(&mut *c)
                        .await?;
                }
                Ok(())
            }
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::Local { held, name } => {
                held.lock().remove(name.as_str());
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres { conn, .. } => {
                // Not released explicitly: never hand a connection that still holds the
                // lock back to the pool. Detaching and dropping it closes the session,
                // which frees the lock on the server.
                if let Some(c) = conn.take() {
                    drop(c.detach());
                }
            }
        }
    }
}

/// A stable 64-bit key for a job name (FNV-1a), as advisory locks take numbers.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("relay-billing:{name}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}
