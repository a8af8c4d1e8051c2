-- Settle one permit. KEYS[1]: counters hash, KEYS[2]: leases zset.
-- ARGV: now, lease_id, admitted_at, d_tokens, d_cost, nw, {len_ms} * nw,
--       nb, {tag, period_start_at_admission} * nb
-- Returns 1 when settled, 0 when the lease is unknown, already settled or expired.
local H, L = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local id = ARGV[2]
local score = redis.call('ZSCORE', L, id)
if not score then return 0 end
redis.call('ZREM', L, id)
if tonumber(score) <= now then return 0 end

local admitted = tonumber(ARGV[3])
local dt, dc = tonumber(ARGV[4]), tonumber(ARGV[5])
local nw = tonumber(ARGV[6])
local i = 7
local fields, lens, tags, starts = {}, {}, {}, {}
for w = 1, nw do
  local len = tonumber(ARGV[i])
  i = i + 1
  lens[w] = len
  local p = 'w' .. len
  fields[#fields + 1] = p .. 'b'
  fields[#fields + 1] = p .. 'ct'
  fields[#fields + 1] = p .. 'cc'
  fields[#fields + 1] = p .. 'pt'
  fields[#fields + 1] = p .. 'pc'
end
local nb = tonumber(ARGV[i])
i = i + 1
for b = 1, nb do
  tags[b] = ARGV[i]
  starts[b] = tonumber(ARGV[i + 1])
  i = i + 2
  fields[#fields + 1] = 'b' .. tags[b] .. 's'
  fields[#fields + 1] = 'b' .. tags[b] .. 'v'
end
if #fields == 0 then return 1 end
local v = redis.call('HMGET', H, unpack(fields))

local function adj(x, d)
  local r = (tonumber(x) or 0) + d
  if r < 0 then r = 0 end
  return r
end

local kv = {}
local k = 1
for w = 1, nw do
  local p = 'w' .. lens[w]
  local sb = tonumber(v[k])
  local ab = math.floor(admitted / lens[w])
  if sb == ab then
    kv[#kv + 1] = p .. 'ct'; kv[#kv + 1] = adj(v[k + 1], dt)
    kv[#kv + 1] = p .. 'cc'; kv[#kv + 1] = adj(v[k + 2], dc)
  elseif sb == ab + 1 then
    kv[#kv + 1] = p .. 'pt'; kv[#kv + 1] = adj(v[k + 3], dt)
    kv[#kv + 1] = p .. 'pc'; kv[#kv + 1] = adj(v[k + 4], dc)
  end
  k = k + 5
end
for b = 1, nb do
  if tonumber(v[k]) == starts[b] then
    kv[#kv + 1] = 'b' .. tags[b] .. 'v'; kv[#kv + 1] = adj(v[k + 1], dc)
  end
  k = k + 2
end
if #kv > 0 then redis.call('HSET', H, unpack(kv)) end
return 1
