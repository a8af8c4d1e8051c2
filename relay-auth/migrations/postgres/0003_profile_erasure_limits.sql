-- Display name (personal data, cleared on erasure), a key's own limits within its plan,
-- pending email changes, risk flags, and indexes for the purge of old tokens and sessions.
ALTER TABLE auth_users ADD COLUMN display_name TEXT;
ALTER TABLE auth_api_keys ADD COLUMN own_limits TEXT;
-- The new address of a pending change, keyed by its confirmation token's hash.
CREATE TABLE IF NOT EXISTS auth_email_changes (
    token_hash BYTEA PRIMARY KEY,
    user_id TEXT NOT NULL,
    new_email TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_risk_flags (
    user_id TEXT NOT NULL,
    flag TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT,
    set_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, flag)
);
CREATE INDEX IF NOT EXISTS auth_risk_flags_flag ON auth_risk_flags (flag);
CREATE INDEX IF NOT EXISTS auth_users_created ON auth_users (created_at, id);
CREATE INDEX IF NOT EXISTS auth_tokens_expires ON auth_tokens (expires_at);
CREATE INDEX IF NOT EXISTS auth_sessions_expires ON auth_sessions (expires_at);
