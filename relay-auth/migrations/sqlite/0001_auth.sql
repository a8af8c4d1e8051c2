-- relay-auth: accounts, tokens, sessions, TOTP and API keys. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS auth_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    password_hash TEXT,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    email_verified_at INTEGER,
    created_at INTEGER NOT NULL
);
-- Exactly one account per email, also under concurrent registration.
CREATE UNIQUE INDEX IF NOT EXISTS auth_users_email ON auth_users (email);

CREATE TABLE IF NOT EXISTS auth_status_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    actor TEXT,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_status_changes_user ON auth_status_changes (user_id, seq);

CREATE TABLE IF NOT EXISTS auth_tokens (
    hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);

CREATE TABLE IF NOT EXISTS auth_totp (
    user_id TEXT PRIMARY KEY,
    sealed_secret BLOB NOT NULL,
    enabled_at INTEGER,
    last_step INTEGER
);

CREATE TABLE IF NOT EXISTS auth_recovery_codes (
    user_id TEXT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (user_id, hash)
);

CREATE TABLE IF NOT EXISTS auth_sessions (
    hash BLOB PRIMARY KEY,
    csrf_hash BLOB NOT NULL,
    user_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE IF NOT EXISTS auth_api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    policy TEXT NOT NULL,
    hash BLOB NOT NULL,
    hint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    first_used_at INTEGER,
    last_used_at INTEGER,
    expires_at INTEGER,
    revoked_at INTEGER,
    suspended_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS auth_api_keys_hash ON auth_api_keys (hash);
CREATE INDEX IF NOT EXISTS auth_api_keys_user ON auth_api_keys (user_id);
