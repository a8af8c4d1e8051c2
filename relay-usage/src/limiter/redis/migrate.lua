  -- Not this policy's layout (or no state yet): rebuild the state in the policy's layout,
  -- keeping the counts of the windows (matched by length, per counted dimension) and
  -- budgets (matched by period) that the policy kept, and every record (leases, notes).
  -- Set just before this block: masks, codes, lens, new_shape (the policy's layout).
  if raw and #raw % 32 == 0 then
    -- Settlement notes appended after the state expired (or was deleted), and nothing
    -- else: their leases are gone with the state, so this is no state.
    local only = true
    for p = 1, #raw, 32 do
      local a, e = sunpack('<dd', raw, p)
      if a >= 0 or e >= 0 then only = false; break end
    end
    if only then raw = nil end
  end
  local function shape_of(s)
    local nb = s % 16; s = (s - nb) / 16
    local nw = s % 16; s = (s - nw) / 16
    local m, c = {}, {}
    for i = nw, 1, -1 do m[i] = s % 8; s = (s - m[i]) / 8 end
    for j = nb, 1, -1 do c[j] = s % 5; s = (s - c[j]) / 5 end
    if s ~= 1 then return nil end
    return m, c
  end
  -- Index (1-based, in doubles) of every value of a layout.
  local function positions(m, nb)
    local p = { bucket = {}, prev = {}, cur = {}, start = {}, spent = {} }
    local count = 3 + 2 * #m + 2 * nb
    for i = 1, #m do
      for _, bit in ipairs({ 1, 2, 4 }) do
        if m[i] % (2 * bit) >= bit then count = count + 2 end
      end
    end
    p.pad = (4 - count % 4) % 4
    p.lens = 4 + p.pad
    local k = p.lens + #m
    for i = 1, #m do
      p.bucket[i] = k; k = k + 1
      p.prev[i] = {}
      for _, bit in ipairs({ 1, 2, 4 }) do
        if m[i] % (2 * bit) >= bit then p.prev[i][bit] = k; k = k + 1 end
      end
    end
    for j = 1, nb do p.start[j] = k; k = k + 1 end
    for i = 1, #m do
      p.cur[i] = {}
      for _, bit in ipairs({ 1, 2, 4 }) do
        if m[i] % (2 * bit) >= bit then p.cur[i][bit] = k; k = k + 1 end
      end
    end
    for j = 1, nb do p.spent[j] = k; k = k + 1 end
    p.fixed = k - 1
    return p
  end
  local t, om, oc, op, records = { 0, 0, -1 }, {}, {}, nil, ''
  if raw then
    local n = #raw / 8
    if n == floor(n) and n >= 3 then
      t = { sunpack('<' .. string.rep('d', n), raw) }
      om, oc = shape_of(t[2])
    end
    if om then op = positions(om, #oc) end
    if not op or t[1] ~= op.fixed * 8 + 1 or (n - op.fixed) % 4 ~= 0 then
      return redis.error_reply('relay limiter: the state at ' .. KEYS[1] .. ' is in an unknown format')
    end
    records = raw:sub(t[1])
  else
    op = positions(om, 0)
  end
  local np = positions(masks, #codes)
  local v = { np.fixed * 8 + 1, new_shape, t[3] }
  for k = 1, np.pad do v[3 + k] = 0 end
  for i = 1, #lens do v[np.lens - 1 + i] = lens[i] end
  local used = {}
  for i = 1, #masks do
    local o = nil
    for k = 1, #om do
      if not o and not used[k] and t[op.lens - 1 + k] == lens[i] then o = k end
    end
    if o then used[o] = true end
    v[np.bucket[i]] = o and t[op.bucket[o]] or floor(now / lens[i])
    for bit, at in pairs(np.prev[i]) do
      v[at] = o and op.prev[o][bit] and t[op.prev[o][bit]] or 0
      v[np.cur[i][bit]] = o and op.cur[o][bit] and t[op.cur[o][bit]] or 0
    end
  end
  used = {}
  for j = 1, #codes do
    local o = nil
    for k = 1, #oc do
      if not o and not used[k] and oc[k] == codes[j] then o = k end
    end
    if o then used[o] = true end
    v[np.start[j]] = o and t[op.start[o]] or -1
    v[np.spent[j]] = o and t[op.spent[o]] or 0
  end
  raw = spack('<' .. string.rep('d', np.fixed), unpack(v, 1, np.fixed)) .. records
