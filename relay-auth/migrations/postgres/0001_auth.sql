-- relay-auth: accounts, tokens, sessions, TOTP and API keys. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS auth_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    password_hash TEXT,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    email_verified_at BIGINT,
    created_at BIGINT NOT NULL
);
-- Exactly one account per email, also under concurrent registration.
CREATE UNIQUE INDEX IF NOT EXISTS auth_users_email ON auth_users (email);

CREATE TABLE IF NOT EXISTS auth_status_changes (
    seq BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    actor TEXT,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_status_changes_user ON auth_status_changes (user_id, seq);

CREATE TABLE IF NOT EXISTS auth_tokens (
    hash BYTEA PRIMARY KEY,
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE IF NOT EXISTS auth_totp (
    user_id TEXT PRIMARY KEY,
    sealed_secret BYTEA NOT NULL,
    enabled_at BIGINT,
    last_step BIGINT
);

CREATE TABLE IF NOT EXISTS auth_recovery_codes (
    user_id TEXT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (user_id, hash)
);

CREATE TABLE IF NOT EXISTS auth_sessions (
    hash BYTEA PRIMARY KEY,
    csrf_hash BYTEA NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX IF NOT EXISTS auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE IF NOT EXISTS auth_api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    policy TEXT NOT NULL,
    hash BYTEA NOT NULL,
    hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    first_used_at BIGINT,
    last_used_at BIGINT,
    expires_at BIGINT,
    revoked_at BIGINT,
    suspended_at BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS auth_api_keys_hash ON auth_api_keys (hash);
CREATE INDEX IF NOT EXISTS auth_api_keys_user ON auth_api_keys (user_id);
