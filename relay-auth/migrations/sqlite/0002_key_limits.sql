-- Per-user key limits, set from the user's plan (KeyProvisioner::apply_entitlement).
CREATE TABLE IF NOT EXISTS auth_key_limits (
    user_id TEXT PRIMARY KEY,
    max_keys INTEGER NOT NULL
);
