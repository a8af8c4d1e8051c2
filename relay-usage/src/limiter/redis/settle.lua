-- Settle one permit. KEYS[1]: the key's state (layout in shape.rs).
-- ARGV[1]: the lease id as the record stores it (one little-endian double, -2 - id).
-- ARGV[2]: the settled record: little-endian doubles now, -1 - admitted_at, token delta,
--   cost delta. It overwrites the lease's record; the next admission folds it in.
-- Returns 1 when settled, 0 when the lease is unknown, already settled or expired.
-- Nothing is decoded: a record boundary is a multiple of 32 bytes from the end, and no
-- fixed value or settled record can equal a lease id there.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local sunpack, find, lid, rec = struct.unpack, string.find, ARGV[1], ARGV[2]
local n, now = #raw + 1, sunpack('<d', rec)
local p = find(raw, lid, 1, true)
while p do
  if (n - p) % 32 == 0 and sunpack('<d', raw, p + 8) > now then
    redis.call('SETRANGE', KEYS[1], p - 1, rec)
    return 1
  end
  p = find(raw, lid, p + 1, true)
end
return 0
