-- Extend a live lease. KEYS[1]: the key's state (see admit.lua). ARGV: now, lease_ttl, lease_id.
-- Returns 1 when extended, 0 when the lease is unknown or already expired.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local s = cmsgpack.unpack(raw)
local now, ttl, id = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local p = 1
p = p + 1 + 8 * s[p]
p = p + 1 + 3 * s[p]
local nl = s[p]; p = p + 1
for l = 0, nl - 1 do
  if s[p + 2 * l] == id then
    if s[p + 2 * l + 1] <= now then return 0 end
    s[p + 2 * l + 1] = now + ttl
    local left = redis.call('PTTL', KEYS[1])
    if left >= 0 and left < 2 * ttl then left = 2 * ttl end
    if left < 0 then
      redis.call('SET', KEYS[1], cmsgpack.pack(s))
    else
      redis.call('SET', KEYS[1], cmsgpack.pack(s), 'PX', left)
    end
    return 1
  end
end
return 0
