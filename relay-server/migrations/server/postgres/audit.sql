CREATE TABLE IF NOT EXISTS server_audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL
)
--;
CREATE INDEX IF NOT EXISTS server_audit_log_actor ON server_audit_log (actor, id)
--;
CREATE INDEX IF NOT EXISTS server_audit_log_target ON server_audit_log (target, id)
--;
CREATE INDEX IF NOT EXISTS server_audit_log_at ON server_audit_log (at)
--;
CREATE OR REPLACE FUNCTION server_audit_log_refuse() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'server_audit_log is append-only';
END;
$$ LANGUAGE plpgsql
--;
CREATE OR REPLACE TRIGGER server_audit_log_no_update BEFORE UPDATE OR DELETE ON server_audit_log
    FOR EACH ROW EXECUTE FUNCTION server_audit_log_refuse()
--;
CREATE OR REPLACE TRIGGER server_audit_log_no_truncate BEFORE TRUNCATE ON server_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION server_audit_log_refuse()
