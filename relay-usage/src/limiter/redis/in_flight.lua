-- Live leases of a key. KEYS[1]: the key's state (layout in shape.rs). ARGV[1]: now.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local sunpack, now = struct.unpack, tonumber(ARGV[1])
local pos = sunpack('<d', raw)
local live = 0
while pos < #raw do
  local _, e = sunpack('<dd', raw, pos)
  if e > now then live = live + 1 end
  pos = pos + 32
end
return live
