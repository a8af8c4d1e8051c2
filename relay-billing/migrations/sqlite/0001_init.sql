-- relay-billing schema (SQLite). Amounts are decimal TEXT (exact), times are Unix
-- milliseconds, flags are 0/1. Statements are separated by lines holding only `--;`.
CREATE TABLE IF NOT EXISTS billing_transactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    user_id TEXT,
    currency TEXT NOT NULL,
    memo TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL
)
--;
CREATE INDEX IF NOT EXISTS billing_transactions_user ON billing_transactions (user_id, seq)
--;
CREATE TABLE IF NOT EXISTS billing_entries (
    tx_id TEXT NOT NULL REFERENCES billing_transactions (id),
    position BIGINT NOT NULL,
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount TEXT NOT NULL,
    PRIMARY KEY (tx_id, position)
)
--;
CREATE INDEX IF NOT EXISTS billing_entries_account ON billing_entries (account, currency)
--;
CREATE TRIGGER IF NOT EXISTS billing_transactions_no_update BEFORE UPDATE ON billing_transactions
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
--;
CREATE TRIGGER IF NOT EXISTS billing_transactions_no_delete BEFORE DELETE ON billing_transactions
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
--;
CREATE TRIGGER IF NOT EXISTS billing_entries_no_update BEFORE UPDATE ON billing_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
--;
CREATE TRIGGER IF NOT EXISTS billing_entries_no_delete BEFORE DELETE ON billing_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
--;
CREATE TABLE IF NOT EXISTS billing_wallets (
    user_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance TEXT NOT NULL,
    credit_limit TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, currency)
)
--;
CREATE TABLE IF NOT EXISTS billing_orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    plan_id TEXT,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    refunded TEXT NOT NULL,
    provider TEXT,
    provider_ref TEXT,
    review_reason TEXT,
    subscription_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
)
--;
CREATE INDEX IF NOT EXISTS billing_orders_pending ON billing_orders (status, expires_at)
--;
CREATE TABLE IF NOT EXISTS billing_payment_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    order_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    provider_ref TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, event_id)
)
--;
CREATE TABLE IF NOT EXISTS billing_plans (
    id TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (family, version)
)
--;
CREATE TABLE IF NOT EXISTS billing_subscriptions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    status TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT,
    cancel_at_period_end BIGINT NOT NULL,
    pending_plan_id TEXT,
    grace_until BIGINT,
    dunning_attempts BIGINT NOT NULL,
    next_retry_at BIGINT,
    open_invoice_id TEXT,
    ended_at BIGINT,
    created_at BIGINT NOT NULL,
    version BIGINT NOT NULL
)
--;
CREATE UNIQUE INDEX IF NOT EXISTS billing_one_live_subscription ON billing_subscriptions (user_id)
    WHERE status IN ('trialing', 'active', 'past_due', 'suspended')
--;
CREATE INDEX IF NOT EXISTS billing_subscriptions_due ON billing_subscriptions (status, period_end)
--;
CREATE TABLE IF NOT EXISTS billing_invoice_sequences (
    series TEXT PRIMARY KEY,
    last BIGINT NOT NULL
)
--;
CREATE TABLE IF NOT EXISTS billing_invoices (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    operator TEXT NOT NULL,
    number TEXT,
    user_id TEXT NOT NULL,
    subscription_id TEXT,
    corrects TEXT,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    tax_rule TEXT NOT NULL,
    lines TEXT NOT NULL,
    subtotal TEXT NOT NULL,
    tax TEXT NOT NULL,
    total TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finalized_at BIGINT,
    closed_at BIGINT,
    UNIQUE (operator, number)
)
--;
CREATE INDEX IF NOT EXISTS billing_invoices_user ON billing_invoices (user_id, created_at)
--;
CREATE TABLE IF NOT EXISTS billing_redemption_codes (
    code TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    expires_at BIGINT,
    redeemed_by TEXT,
    redeemed_at BIGINT,
    created_at BIGINT NOT NULL
)
--;
CREATE TABLE IF NOT EXISTS billing_usage_batches (
    batch_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    subscription_id TEXT,
    plan_id TEXT,
    period_start BIGINT,
    currency TEXT NOT NULL,
    cost TEXT NOT NULL,
    covered TEXT NOT NULL,
    charged TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    invoice_id TEXT
)
--;
CREATE INDEX IF NOT EXISTS billing_usage_batches_uninvoiced ON billing_usage_batches (user_id, invoice_id, created_at)
--;
CREATE INDEX IF NOT EXISTS billing_usage_batches_period ON billing_usage_batches (subscription_id, period_start)
--;
CREATE TABLE IF NOT EXISTS billing_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
)
--;
CREATE INDEX IF NOT EXISTS billing_events_subject ON billing_events (subject, seq)
--;
CREATE TABLE IF NOT EXISTS billing_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
)
