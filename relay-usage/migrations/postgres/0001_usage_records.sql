-- relay-usage: one row per metered request, and daily rollups.
-- Costs are exact decimals stored as unconstrained NUMERIC (any scale, exact); times are Unix milliseconds (UTC).
CREATE TABLE IF NOT EXISTS usage_records (
    request_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    service TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_write_5m_tokens BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    cost NUMERIC NOT NULL,
    currency TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_at ON usage_records (at_ms);
CREATE INDEX IF NOT EXISTS usage_records_user_at ON usage_records (user_id, at_ms);
CREATE INDEX IF NOT EXISTS usage_records_key_at ON usage_records (key_id, at_ms);

-- One row per UTC day, user, key, model and currency.
CREATE TABLE IF NOT EXISTS usage_daily (
    day DATE NOT NULL,
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    currency TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_write_5m_tokens BIGINT NOT NULL,
    cache_write_1h_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    events BIGINT NOT NULL,
    cost NUMERIC NOT NULL,
    PRIMARY KEY (day, user_id, key_id, model, currency)
);
CREATE INDEX IF NOT EXISTS usage_daily_user_day ON usage_daily (user_id, day);
CREATE INDEX IF NOT EXISTS usage_daily_key_day ON usage_daily (key_id, day);
