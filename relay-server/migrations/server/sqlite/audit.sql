CREATE TABLE IF NOT EXISTS server_audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE TRIGGER IF NOT EXISTS server_audit_log_no_update BEFORE UPDATE ON server_audit_log
BEGIN
    SELECT RAISE(ABORT, 'server_audit_log is append-only');
END
--;
CREATE TRIGGER IF NOT EXISTS server_audit_log_no_delete BEFORE DELETE ON server_audit_log
BEGIN
    SELECT RAISE(ABORT, 'server_audit_log is append-only');
END
