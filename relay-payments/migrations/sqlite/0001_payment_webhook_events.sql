-- Deduplication of webhook events by (provider, event id); times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS payment_webhook_events (
    provider      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    processed     INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT,
    claim_token   TEXT,
    claimed_until INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    first_seen_at INTEGER NOT NULL,
    processed_at  INTEGER,
    PRIMARY KEY (provider, event_id)
);
