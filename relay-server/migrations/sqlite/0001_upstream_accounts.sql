CREATE TABLE IF NOT EXISTS relay_upstream_accounts (
    name TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    base_url TEXT NOT NULL,
    weight INTEGER NOT NULL,
    sealed_key BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);
