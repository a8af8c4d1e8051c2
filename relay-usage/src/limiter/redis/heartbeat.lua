-- Extend a live lease. KEYS[1]: the key's state (layout in shape.rs).
-- ARGV[1]: the lease id as records store it (one little-endian double, -2 - id).
-- ARGV[2]: little-endian doubles now, new expiry, lease ttl.
-- Returns 1 when extended, 0 when the lease is unknown, settled or already expired.
-- Nothing is decoded to find it: a record boundary is a multiple of 32 bytes from the
-- end, and only a lease or its settlement notes start with its id there.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local sunpack, spack, find, lid = struct.unpack, struct.pack, string.find, ARGV[1]
local now, exp, ttl = sunpack('<ddd', ARGV[2])
local n = #raw + 1
local p, at = find(raw, lid, 1, true), nil
while p do
  if (n - p) % 32 == 0 then
    local e = sunpack('<d', raw, p + 8)
    -- A settlement note (negative second value): the lease is settled, whatever its expiry.
    if e < 0 then return 0 end
    if e > now and not at then at = p end
  end
  p = find(raw, lid, p + 1, true)
end
if not at then return 0 end
redis.call('SETRANGE', KEYS[1], at + 7, spack('<d', exp))
-- The key must outlive the lease: push its TTL out when it runs short.
local untl = sunpack('<d', raw, 17)
if untl >= 0 and untl - now < 2 * ttl then
  redis.call('PEXPIRE', KEYS[1], 4 * ttl)
  redis.call('SETRANGE', KEYS[1], 16, spack('<d', now + 4 * ttl))
end
return 1
