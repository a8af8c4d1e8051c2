-- Deduplication of webhook events by (provider, event id); times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS payment_webhook_events (
    provider      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    processed     BOOLEAN NOT NULL DEFAULT FALSE,
    outcome       TEXT,
    claim_token   TEXT,
    claimed_until BIGINT  NOT NULL,
    attempts      BIGINT  NOT NULL,
    first_seen_at BIGINT  NOT NULL,
    processed_at  BIGINT,
    PRIMARY KEY (provider, event_id)
);
