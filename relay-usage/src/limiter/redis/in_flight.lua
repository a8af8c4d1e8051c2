-- Live leases of a key. KEYS[1]: the key's state (see admit.lua). ARGV: now.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local s = cmsgpack.unpack(raw)
local now = tonumber(ARGV[1])
local p = 1
p = p + 1 + 8 * s[p]
p = p + 1 + 3 * s[p]
local nl = s[p]; p = p + 1
local live = 0
for l = 0, nl - 1 do
  if s[p + 2 * l + 1] > now then live = live + 1 end
end
return live
