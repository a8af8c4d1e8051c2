-- Settle one permit. KEYS[1]: the key's state (see admit.lua).
-- ARGV[1]: msgpack flat array: now, lease_id, admitted_at, d_tokens, d_cost,
--   nb, {code, period_start_at_admission} * nb
-- Returns 1 when settled, 0 when the lease is unknown, already settled or expired.
local floor = math.floor
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local s = cmsgpack.unpack(raw)
local a = cmsgpack.unpack(ARGV[1])
local now, id, admitted, dt, dc = a[1], a[2], a[3], a[4], a[5]

local nw = s[1]
local nb = s[2 + 8 * nw]
local lp = 3 + 8 * nw + 3 * nb
local nl = s[lp]
local found = -1
for l = 0, nl - 1 do
  if s[lp + 1 + 2 * l] == id then found = l end
end
if found < 0 or s[lp + 2 + 2 * found] <= now then return 0 end
-- Drop the lease: move the last one into its slot.
local last = lp + 2 * nl - 1
s[lp + 1 + 2 * found], s[lp + 2 + 2 * found] = s[last], s[last + 1]
s[last], s[last + 1] = nil, nil
s[lp] = nl - 1

local function adj(k, d)
  local r = s[k] + d
  if r < 0 then r = 0 end
  s[k] = r
end
for w = 0, nw - 1 do
  local q = 2 + 8 * w
  local ab = floor(admitted / s[q])
  if s[q + 1] == ab then
    adj(q + 6, dt); adj(q + 7, dc)
  elseif s[q + 1] == ab + 1 then
    adj(q + 3, dt); adj(q + 4, dc)
  end
end
for b = 0, a[6] - 1 do
  local code, start = a[7 + 2 * b], a[8 + 2 * b]
  for o = 0, nb - 1 do
    local q = 3 + 8 * nw + 3 * o
    if s[q] == code and s[q + 1] == start then adj(q + 2, dc) end
  end
end
redis.call('SET', KEYS[1], cmsgpack.pack(s), 'KEEPTTL')
return 1
