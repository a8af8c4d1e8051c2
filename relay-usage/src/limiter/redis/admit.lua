-- One atomic admission. KEYS[1]: counters hash, KEYS[2]: leases zset (same hash tag).
-- ARGV: now, lease_ttl, lease_id, concurrency (0 = none), est_tokens, est_cost, expire_ms
--       (-1 = leave), nw, {len_ms, max_req, max_tok, max_cost (-1 = none)} * nw,
--       nb, {tag, period_start, period_end (-1 = never), cap} * nb
-- Returns {1} when admitted, else {0, kind, index, cap_kind, retry_ms}:
--   kind 1 concurrency (index = limit), 2 window (index = window #, cap_kind 1 req 2 tok
--   3 cost), 3 budget (index = budget #, retry_ms -1 = never).
local H, L = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local id = ARGV[3]
local conc = tonumber(ARGV[4])
local add = { 1, tonumber(ARGV[5]), tonumber(ARGV[6]) }
local expire = tonumber(ARGV[7])
local nw = tonumber(ARGV[8])
local i = 9

redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
if conc > 0 and redis.call('ZCARD', L) >= conc then
  return { 0, 1, conc, 0, 1000 }
end

local SUFFIX = { 'b', 'pr', 'pt', 'pc', 'cr', 'ct', 'cc' }
local fields, win, bud = {}, {}, {}
for w = 1, nw do
  local len = tonumber(ARGV[i])
  win[w] = { len, { tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]) } }
  i = i + 4
  for _, s in ipairs(SUFFIX) do fields[#fields + 1] = 'w' .. len .. s end
end
local nb = tonumber(ARGV[i])
i = i + 1
for b = 1, nb do
  local tag = ARGV[i]
  bud[b] = { tag, tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]) }
  i = i + 4
  fields[#fields + 1] = 'b' .. tag .. 's'
  fields[#fields + 1] = 'b' .. tag .. 'v'
end

local v = {}
if #fields > 0 then v = redis.call('HMGET', H, unpack(fields)) end

local function retry_ms(cap, prev, cur, x, elapsed, len)
  local t
  if x > cap then return len end
  if cur + x <= cap then
    if prev == 0 then t = 0 else t = len - math.floor((cap - cur - x) * len / prev) end
    t = t - elapsed
  else
    if cur == 0 then t = 0 else t = len - math.floor((cap - x) * len / cur) end
    t = (len - elapsed) + t
  end
  if t < 1 then t = 1 end
  return t
end

local k = 1
for w = 1, nw do
  local len, caps = win[w][1], win[w][2]
  local bucket = math.floor(now / len)
  local sb = tonumber(v[k]) or bucket
  local prev = { tonumber(v[k + 1]) or 0, tonumber(v[k + 2]) or 0, tonumber(v[k + 3]) or 0 }
  local cur = { tonumber(v[k + 4]) or 0, tonumber(v[k + 5]) or 0, tonumber(v[k + 6]) or 0 }
  if bucket == sb + 1 then
    prev = cur
    cur = { 0, 0, 0 }
    sb = bucket
  elseif bucket > sb + 1 then
    prev = { 0, 0, 0 }
    cur = { 0, 0, 0 }
    sb = bucket
  end
  local elapsed = now - sb * len
  local remaining = len - elapsed
  if remaining < 0 then remaining = 0 end
  for c = 1, 3 do
    local cap = caps[c]
    if cap >= 0 and math.ceil(prev[c] * remaining / len) + cur[c] + add[c] > cap then
      return { 0, 2, w, c, retry_ms(cap, prev[c], cur[c], add[c], elapsed, len) }
    end
  end
  win[w][3] = { sb, prev, cur }
  k = k + 7
end
for b = 1, nb do
  local st, en, cap = bud[b][2], bud[b][3], bud[b][4]
  local s = tonumber(v[k])
  local spent = tonumber(v[k + 1]) or 0
  if s == nil or st > s then
    s = st
    spent = 0
  end
  if spent + add[3] > cap then
    local wait = -1
    if en >= 0 then wait = en - now end
    return { 0, 3, b, 0, wait }
  end
  bud[b][5] = s
  bud[b][6] = spent + add[3]
  k = k + 2
end

local kv = {}
for w = 1, nw do
  local p = 'w' .. win[w][1]
  local st = win[w][3]
  local prev, cur = st[2], st[3]
  kv[#kv + 1] = p .. 'b'; kv[#kv + 1] = st[1]
  kv[#kv + 1] = p .. 'pr'; kv[#kv + 1] = prev[1]
  kv[#kv + 1] = p .. 'pt'; kv[#kv + 1] = prev[2]
  kv[#kv + 1] = p .. 'pc'; kv[#kv + 1] = prev[3]
  kv[#kv + 1] = p .. 'cr'; kv[#kv + 1] = cur[1] + add[1]
  kv[#kv + 1] = p .. 'ct'; kv[#kv + 1] = cur[2] + add[2]
  kv[#kv + 1] = p .. 'cc'; kv[#kv + 1] = cur[3] + add[3]
end
for b = 1, nb do
  local tag = bud[b][1]
  kv[#kv + 1] = 'b' .. tag .. 's'; kv[#kv + 1] = bud[b][5]
  kv[#kv + 1] = 'b' .. tag .. 'v'; kv[#kv + 1] = bud[b][6]
end
if #kv > 0 then
  redis.call('HSET', H, unpack(kv))
  if expire > 0 then redis.call('PEXPIRE', H, expire) end
end
redis.call('ZADD', L, now + ttl, id)
redis.call('PEXPIRE', L, ttl * 2)
return { 1 }
