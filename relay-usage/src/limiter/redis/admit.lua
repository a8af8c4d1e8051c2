-- One atomic admission.
-- KEYS[1]: the key's state, one msgpack-encoded flat array of numbers:
--   nw, {len, bucket, prev_req, prev_tok, prev_cost, cur_req, cur_tok, cur_cost} * nw,
--   nb, {code, period_start, spent} * nb, nl, {lease_id, expiry} * nl
-- ARGV[1]: msgpack flat array: now, lease_ttl, lease_id, concurrency (0 = none),
--   est_tokens, est_cost, expire_ms (0 = never), nw, {len, max_req, max_tok, max_cost} * nw,
--   nb, {code, period_start, period_end, cap} * nb   (-1 = none / never)
-- Returns {1} when admitted, else {0, kind, index, cap_kind, retry_ms}: kind 1
-- concurrency (index = limit), 2 window (cap_kind 1 req, 2 tok, 3 cost), 3 budget
-- (retry_ms -1 = never).
-- The state is updated in place (no per-request tables or strings): Lua allocation is most
-- of a script's cost.
local floor, ceil = math.floor, math.ceil
local a = cmsgpack.unpack(ARGV[1])
local now, ttl, id, conc = a[1], a[2], a[3], a[4]
local tok, cost, expire = a[5], a[6], a[7]
local nw = a[8]
local nb = a[9 + 4 * nw]

local raw = redis.call('GET', KEYS[1])
local s
if raw then s = cmsgpack.unpack(raw) else s = { 0, 0, 0 } end

-- Does the stored layout match the policy (same windows, same budgets, in order)?
local same = s[1] == nw and s[2 + 8 * nw] == nb
if same then
  for w = 0, nw - 1 do
    if s[2 + 8 * w] ~= a[9 + 4 * w] then same = false end
  end
  for b = 0, nb - 1 do
    if s[3 + 8 * nw + 3 * b] ~= a[10 + 4 * nw + 4 * b] then same = false end
  end
end
if not same then
  -- Rebuild in the policy's layout, keeping the counts of windows and budgets it kept.
  local old = s
  s = { nw }
  local p = 2 + 8 * (old[1] or 0)
  local onb = old[p] or 0
  for w = 0, nw - 1 do
    local len = a[9 + 4 * w]
    local q = #s
    local found = false
    for o = 0, (old[1] or 0) - 1 do
      if old[2 + 8 * o] == len then
        for k = 0, 7 do s[q + 1 + k] = old[2 + 8 * o + k] end
        found = true
      end
    end
    if not found then
      s[q + 1] = len; s[q + 2] = floor(now / len)
      for k = 3, 8 do s[q + k] = 0 end
    end
  end
  s[#s + 1] = nb
  for b = 0, nb - 1 do
    local code = a[10 + 4 * nw + 4 * b]
    local q = #s
    s[q + 1] = code; s[q + 2] = -1; s[q + 3] = 0
    for o = 0, onb - 1 do
      if old[p + 1 + 3 * o] == code then
        s[q + 2] = old[p + 2 + 3 * o]; s[q + 3] = old[p + 3 + 3 * o]
      end
    end
  end
  local lp = p + 1 + 3 * onb
  local nl = old[lp] or 0
  s[#s + 1] = nl
  for k = 1, 2 * nl do s[#s + 1] = old[lp + k] end
end

-- Leases: drop expired ones in place, then check the limit.
local lp = 3 + 8 * nw + 3 * nb
local nl = s[lp]
local live = 0
for l = 0, nl - 1 do
  local e = s[lp + 2 + 2 * l]
  if e > now then
    s[lp + 1 + 2 * live] = s[lp + 1 + 2 * l]
    s[lp + 2 + 2 * live] = e
    live = live + 1
  end
end
for k = lp + 1 + 2 * live, lp + 2 * nl do s[k] = nil end
if conc > 0 and live >= conc then return { 0, 1, conc, 0, 1000 } end

-- Windows: roll to the current bucket, then check every cap.
for w = 0, nw - 1 do
  local q = 2 + 8 * w
  local len = s[q]
  local bucket = floor(now / len)
  local b = s[q + 1]
  if bucket == b + 1 then
    s[q + 2], s[q + 3], s[q + 4] = s[q + 5], s[q + 6], s[q + 7]
    s[q + 5], s[q + 6], s[q + 7] = 0, 0, 0
    s[q + 1] = bucket
  elseif bucket > b + 1 then
    for k = 2, 7 do s[q + k] = 0 end
    s[q + 1] = bucket
  end
  local elapsed = now - s[q + 1] * len
  local remaining = len - elapsed
  if remaining < 0 then remaining = 0 end
  for c = 1, 3 do
    local cap = a[9 + 4 * w + c]
    local x = 1
    if c == 2 then x = tok elseif c == 3 then x = cost end
    local prev, cur = s[q + 1 + c], s[q + 4 + c]
    if cap >= 0 and ceil(prev * remaining / len) + cur + x > cap then
      local t = 0
      if x > cap then
        t = len
      elseif cur + x <= cap then
        if prev > 0 then t = len - floor((cap - cur - x) * len / prev) end
        t = t - elapsed
      else
        if cur > 0 then t = len - floor((cap - x) * len / cur) end
        t = (len - elapsed) + t
      end
      if t < 1 then t = 1 end
      return { 0, 2, w + 1, c, t }
    end
  end
end

-- Budgets: a newer period resets the spend; a lagging instance's older one never does.
for b = 0, nb - 1 do
  local q = 3 + 8 * nw + 3 * b
  local ap = 10 + 4 * nw + 4 * b
  local start, en, cap = a[ap + 1], a[ap + 2], a[ap + 3]
  if start > s[q + 1] then
    s[q + 1] = start
    s[q + 2] = 0
  end
  if s[q + 2] + cost > cap then
    local wait = -1
    if en >= 0 then wait = en - now end
    return { 0, 3, b + 1, 0, wait }
  end
end

-- Admit: count it everywhere and take a lease.
for w = 0, nw - 1 do
  local q = 2 + 8 * w
  s[q + 5] = s[q + 5] + 1
  s[q + 6] = s[q + 6] + tok
  s[q + 7] = s[q + 7] + cost
end
for b = 0, nb - 1 do
  local q = 3 + 8 * nw + 3 * b
  s[q + 2] = s[q + 2] + cost
end
s[lp] = live + 1
s[lp + 1 + 2 * live] = id
s[lp + 2 + 2 * live] = now + ttl
-- Setting an expiry costs more than reading one: the TTL is only pushed out (to twice what
-- is needed) when what is left would not cover what the state must outlive.
if expire > 0 then
  if expire < 2 * ttl then expire = 2 * ttl end
  local left = -2
  if raw then left = redis.call('PTTL', KEYS[1]) end
  if left >= expire then
    redis.call('SET', KEYS[1], cmsgpack.pack(s), 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], cmsgpack.pack(s), 'PX', 2 * expire)
  end
else
  redis.call('SET', KEYS[1], cmsgpack.pack(s))
end
return { 1 }
