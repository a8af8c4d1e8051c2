-- Extend a live lease. KEYS[1]: leases zset. ARGV: now, lease_ttl, lease_id.
-- Returns 1 when extended, 0 when the lease is unknown or already expired.
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score or tonumber(score) <= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
