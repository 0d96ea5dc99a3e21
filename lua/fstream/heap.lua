-- A binary min-heap of (time, item) pairs, kept in two parallel arrays so a
-- push or pop allocates no table per entry: the join buffers' expiry and the
-- ttl tables' deadlines both pop only what is due, whatever their size.
--   local h = Heap.new(); Heap.push(h, t, item)
--   while h.n > 0 and h.t[1] <= now do local item = Heap.pop(h) ... end
local Heap = {}

function Heap.new() return { n = 0, t = {}, k = {} } end

function Heap.push(h, t, item)
  local ts, ks = h.t, h.k
  local i = h.n + 1
  h.n = i
  while i > 1 do
    local up = i // 2
    if ts[up] <= t then break end
    ts[i], ks[i] = ts[up], ks[up]
    i = up
  end
  ts[i], ks[i] = t, item
end

-- Removes the entry with the least time and returns its item.
function Heap.pop(h)
  local ts, ks, n = h.t, h.k, h.n
  local top = ks[1]
  local t, item = ts[n], ks[n]
  ts[n], ks[n] = nil, nil
  n = n - 1
  h.n = n
  if n > 0 then
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n and ts[c + 1] < ts[c] then c = c + 1 end
      if t <= ts[c] then break end
      ts[i], ks[i] = ts[c], ks[c]
      i = c
    end
    ts[i], ks[i] = t, item
  end
  return top
end

return Heap
