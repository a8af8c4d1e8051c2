//! Who runs a job's tick: exactly one instance, however many share the database.
//!
//! A tick is `now / period`. Claiming `(job, tick)` is one atomic write that only one
//! instance can win: a row under a primary key in SQL ([`SqlRunClaims`]), or a fenced
//! `SET NX PX` in Redis ([`RedisRunClaims`]). The billing jobs additionally take
//! relay-billing's leader lock (a PostgreSQL advisory lock), so two runs of a job never
//! overlap even when a run outlasts its tick.

use std::time::Duration;

use async_trait::async_trait;
use relay_core::SharedClock;
use sqlx::AnyPool;

use super::JobError;
use crate::audit::sql::{self, Dialect};

const SQLITE: &str = include_str!("../../migrations/server/sqlite/jobs.sql");
const POSTGRES: &str = include_str!("../../migrations/server/postgres/jobs.sql");

/// A won claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job.
    pub job: String,
    /// The tick.
    pub tick: i64,
    /// A number that grows with every claim of the job (Redis), or the tick (SQL):
    /// later claims carry larger tokens, so a stale holder can be told apart.
    pub fence: i64,
}

/// Decides which instance runs each tick of each job.
#[async_trait]
pub trait RunClaims: Send + Sync + std::fmt::Debug + 'static {
    /// Try to claim `tick` of `job` for `instance`; `None` when another instance has it.
    /// `ttl` is how long the claim must be remembered (at least the job's period).
    async fn claim(
        &self,
        job: &str,
        tick: i64,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, JobError>;
    /// Record how the claimed run ended (a line of text).
    async fn finish(&self, claim: &Claim, outcome: &str) -> Result<(), JobError>;
}

/// Claims as rows of `server_job_runs` (SQLite or PostgreSQL). The rows also serve as
/// the history of runs.
#[derive(Debug, Clone)]
pub struct SqlRunClaims {
    pool: AnyPool,
    clock: SharedClock,
}

/// Create the job-runs table if missing (idempotent). [`SqlRunClaims::open`] calls it.
pub async fn migrate(pool: &AnyPool) -> Result<(), JobError> {
    let dialect = sql::dialect(pool).await?;
    let text = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    sql::apply(pool, dialect, "jobs", text).await?;
    Ok(())
}

impl SqlRunClaims {
    /// Claims in `pool`'s database, migrated.
    pub async fn open(pool: AnyPool, clock: SharedClock) -> Result<Self, JobError> {
        migrate(&pool).await?;
        Ok(Self { pool, clock })
    }

    /// The recorded runs of `job`, oldest tick first: `(tick, instance, outcome)`.
    pub async fn runs(&self, job: &str) -> Result<Vec<(i64, String, Option<String>)>, JobError> {
        let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
            "SELECT tick, instance, outcome FROM server_job_runs WHERE job = $1 ORDER BY tick",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

#[async_trait]
impl RunClaims for SqlRunClaims {
    async fn claim(
        &self,
        job: &str,
        tick: i64,
        instance: &str,
        _ttl: Duration,
    ) -> Result<Option<Claim>, JobError> {
        let done = sqlx::query(
            "INSERT INTO server_job_runs (job, tick, instance, started_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job, tick) DO NOTHING",
        )
        .bind(job)
        .bind(tick)
        .bind(instance)
        .bind(self.clock.now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then(|| Claim {
            job: job.to_owned(),
            tick,
            fence: tick,
        }))
    }

    async fn finish(&self, claim: &Claim, outcome: &str) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE server_job_runs SET finished_at = $1, outcome = $2 WHERE job = $3 AND tick = $4",
        )
        .bind(self.clock.now().timestamp_millis())
        .bind(outcome)
        .bind(&claim.job)
        .bind(claim.tick)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Claims in Redis: `INCR` hands out a fencing token, `SET key token NX PX ttl` takes the
/// tick. Outcomes are written only while the key still holds our token (one script).
#[derive(Clone)]
pub struct RedisRunClaims {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisRunClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRunClaims")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const FINISH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

impl RedisRunClaims {
    /// Claims under keys starting with `prefix` (like `relay:jobs:`).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, JobError> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, job: &str, tick: i64, what: &str) -> String {
        // One hash tag per job keeps a job's keys on one Redis Cluster slot.
        format!("{}{{{job}}}:{what}:{tick}", self.prefix)
    }
}

#[async_trait]
impl RunClaims for RedisRunClaims {
    async fn claim(
        &self,
        job: &str,
        tick: i64,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, JobError> {
        let mut conn = self.conn.clone();
        let fence: i64 = redis::cmd("INCR")
            .arg(format!("{}{{{job}}}:fence", self.prefix))
            .query_async(&mut conn)
            .await?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let won: Option<String> = redis::cmd("SET")
            .arg(self.key(job, tick, "run"))
            .arg(format!("{fence}:{instance}"))
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(won.map(|_| Claim {
            job: job.to_owned(),
            tick,
            fence,
        }))
    }

    async fn finish(&self, claim: &Claim, outcome: &str) -> Result<(), JobError> {
        let mut conn = self.conn.clone();
        let run_key = self.key(&claim.job, claim.tick, "run");
        let holder: Option<String> = redis::cmd("GET")
            .arg(&run_key)
            .query_async(&mut conn)
            .await?;
        let Some(holder) = holder else {
            return Ok(()); // The claim expired; nothing to record against.
        };
        if !holder.starts_with(&format!("{}:", claim.fence)) {
            return Err(JobError::Fenced {
                job: claim.job.clone(),
                fence: claim.fence,
            });
        }
        let _: i64 = redis::Script::new(FINISH)
            .key(&run_key)
            .key(self.key(&claim.job, claim.tick, "outcome"))
            .arg(&holder)
            .arg(outcome)
            .arg(86_400_000u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
