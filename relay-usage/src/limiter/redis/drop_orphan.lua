-- Delete KEYS[1] if it holds settlement notes only: a settlement's APPEND created it
-- because the state had expired (or was deleted), and without a TTL it would stay until
-- the key's next admission. A state (first value positive) is left alone: an admission
-- may have written one since. Returns 1 when deleted.
local raw = redis.call('GET', KEYS[1])
if not raw or #raw == 0 or #raw % 32 ~= 0 then return 0 end
local sunpack = struct.unpack
for p = 1, #raw, 32 do
  local a, e = sunpack('<dd', raw, p)
  if a >= 0 or e >= 0 then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
