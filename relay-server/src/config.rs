//! Configuration from the environment (and command-line flags, which win).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | `sqlite://relay.db` | `sqlite://PATH` (embedded) or `postgres://…` |
//! | `REDIS_URL` | unset | unset: in-memory limiter, one instance; set: shared limiter |
//! | `RELAY_BIND` | `127.0.0.1:8080` | address to listen on |

use std::fmt;
use std::net::SocketAddr;

use clap::Parser;

/// Why the configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `DATABASE_URL` is not a SQLite or PostgreSQL URL.
    #[error("DATABASE_URL `{0}` is not supported: use sqlite://PATH (for example sqlite://relay.db) or postgres://USER@HOST/DB")]
    Database(String),
    /// `REDIS_URL` is not a Redis URL.
    #[error("REDIS_URL `{0}` is not a Redis URL: use redis://HOST:PORT (or rediss:// for TLS), or unset it for the in-memory limiter")]
    Redis(String),
    /// `RELAY_BIND` is not an address.
    #[error("RELAY_BIND `{0}` is not a socket address: use HOST:PORT such as 127.0.0.1:8080 or 0.0.0.0:8080")]
    Bind(String),
}

/// Command-line flags; each also reads its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "relay-server",
    version,
    about = "Metered gateway in front of Anthropic, OpenAI and Gemini accounts"
)]
pub struct Args {
    /// Database: sqlite://PATH (embedded default) or postgres://USER@HOST/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://relay.db")]
    pub database_url: String,
    /// Redis for the shared limiter; unset runs the in-memory limiter (one instance).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "RELAY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
}

/// Where durable state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (embedded default).
    Sqlite(String),
    /// A PostgreSQL server.
    Postgres(String),
}

impl DatabaseUrl {
    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(url) => url.clone(),
            DatabaseUrl::Postgres(url) => redact_password(url),
        }
    }

    fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(ConfigError::Database(url.to_owned()));
            }
            return Ok(DatabaseUrl::Sqlite(url.to_owned()));
        }
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            if !rest.is_empty() {
                return Ok(DatabaseUrl::Postgres(url.to_owned()));
            }
        }
        Err(ConfigError::Database(redact_password(url)))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn redact_password(url: &str) -> String {
    // scheme://user:password@host -> scheme://user:***@host
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Durable store.
    pub database: DatabaseUrl,
    /// Shared limiter, when set.
    pub redis_url: Option<String>,
    /// Listening address.
    pub bind: SocketAddr,
}

impl Config {
    /// Validate parsed flags.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let database = DatabaseUrl::parse(&args.database_url)?;
        let redis_url = match args.redis_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(url.to_owned())
            }
            Some(url) => return Err(ConfigError::Redis(redact_password(url))),
        };
        let bind = args
            .bind
            .trim()
            .parse()
            .map_err(|_| ConfigError::Bind(args.bind.clone()))?;
        Ok(Self {
            database,
            redis_url,
            bind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(db: &str, redis: Option<&str>, bind: &str) -> Args {
        Args {
            database_url: db.into(),
            redis_url: redis.map(Into::into),
            bind: bind.into(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let a = Args::parse_from(["relay-server"]);
        // The environment may set these in CI; only check parsing when it does not.
        if std::env::var_os("DATABASE_URL").is_none() && std::env::var_os("RELAY_BIND").is_none() {
            let c = Config::from_args(&a).unwrap();
            assert_eq!(c.database, DatabaseUrl::Sqlite("sqlite://relay.db".into()));
            assert_eq!(c.bind, "127.0.0.1:8080".parse().unwrap());
        }
    }

    #[test]
    fn accepts_postgres_and_redis() {
        let c = Config::from_args(&args(
            "postgres://root:secret@127.0.0.1/test",
            Some("redis://127.0.0.1:6379"),
            "0.0.0.0:9000",
        ))
        .unwrap();
        assert!(matches!(c.database, DatabaseUrl::Postgres(_)));
        assert_eq!(c.database.redacted(), "postgres://root:***@127.0.0.1/test");
        assert!(!format!("{:?}", c).contains("secret"));
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    }

    #[test]
    fn rejects_bad_values_with_clear_messages() {
        let e = Config::from_args(&args("mysql://x:pw@h/db", None, "127.0.0.1:1")).unwrap_err();
        assert!(e.to_string().contains("sqlite://PATH"));
        assert!(!e.to_string().contains("pw"), "password leaked: {e}");
        assert!(Config::from_args(&args("sqlite://", None, "127.0.0.1:1")).is_err());
        let e =
            Config::from_args(&args("sqlite://x.db", Some("http://h"), "127.0.0.1:1")).unwrap_err();
        assert!(e.to_string().contains("redis://HOST:PORT"));
        let e = Config::from_args(&args("sqlite://x.db", None, "localhost")).unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"));
        // An empty REDIS_URL means unset.
        assert!(
            Config::from_args(&args("sqlite://x.db", Some(""), "127.0.0.1:1"))
                .unwrap()
                .redis_url
                .is_none()
        );
    }
}
