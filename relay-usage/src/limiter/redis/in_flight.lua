-- Live leases of a key. KEYS[1]: the key's state (layout in shape.rs). ARGV[1]: now.
-- A lease with a settlement note is settled, though the next admission drops it.
local raw = redis.call('GET', KEYS[1])
if not raw or #raw < 32 then return 0 end
local sunpack, now = struct.unpack, tonumber(ARGV[1])
local first = sunpack('<d', raw)
-- Notes only (appended after the state expired): no state, no lease.
if first < 1 then return 0 end
-- Notes are the tail of the records (see shape.rs): collect their lease ids from the end.
local settled, tail = {}, #raw + 1
while tail > first do
  local a, e = sunpack('<dd', raw, tail - 32)
  if a >= 0 or e >= 0 then break end
  settled[a] = true
  tail = tail - 32
end
local live, pos = 0, first
while pos < tail do
  local a, e = sunpack('<dd', raw, pos)
  if e > now and not settled[a] then live = live + 1 end
  pos = pos + 32
end
return live
