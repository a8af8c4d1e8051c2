-- relay-usage: drop the per-user and per-key indexes of usage_records.
-- No query reads them: per-user and per-key reports read usage_daily, and rollups and
-- billing scan usage_records by time (usage_records_at). Each cost a B-tree write per
-- recorded request, on the write path every relayed request takes.
DROP INDEX IF EXISTS usage_records_user_at;
DROP INDEX IF EXISTS usage_records_key_at;
