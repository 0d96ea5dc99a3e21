-- Windowed tables on fstream.testing's fake clock, with exact expectations.
local fstream = require "fstream"
local window = require "fstream.window"

-- An app with one windowed table over topic "ev"; values {k=, ts=, n=}.
local function setup_app(id, configure, update)
  local a = fstream.app(id, { topic_partitions = 1, table_cleanup_interval = 1.0 })
  local closed, late = {}, {}
  local ev = a:topic("ev")
  local tb = configure(a:table("w", {
    default = update and function() return {} end or 0,
    on_window_close = function(key, win, value)
      closed[#closed + 1] = { key = key, start = win.start, ["end"] = win["end"], value = value }
    end,
    on_late = function(key, value) late[#late + 1] = value.n end,
  }))
  a:agent("agg", ev, function(stream)
    for v in stream do
      if update then tb:update(v.k, function(l) l[#l + 1] = v.n; return l end)
      else tb:update(v.k, function(c) return c + 1 end) end
    end
  end)
  local t = fstream.testing(a)
  return t, closed, late, ev, tb
end

local function by_start(closed)
  table.sort(closed, function(x, y) return x.start < y.start end)
  return closed
end

describe("windows", function()
  it("hopping 10 s / 1 s: every closed window holds exactly its events, in order, once", function()
    local t, closed, late, ev = setup_app("hop", function(tb)
      return tb:hopping(10, 1, { expires = 0 }):relative_to_field("ts")
    end, true)
    local times = { 1000, 1000.5, 1003, 1007.25, 1009, 1012, 1015, 1030 }
    for n, ts in ipairs(times) do t:send(ev, { key = "s", value = { k = "s", ts = ts, n = n } }) end
    t:run()
    t:advance(2)
    by_start(closed)
    -- Stream time is 1030: windows ending before 1030 are closed (991..1019 starts).
    local seen = {}
    for _, c in ipairs(closed) do
      assert.is_nil(seen[c.start], "window " .. c.start .. " closed twice")
      seen[c.start] = true
      assert.are.equal(c.start + 10, c["end"])
      local expect = {}
      for n, ts in ipairs(times) do
        if ts >= c.start and ts < c["end"] then expect[#expect + 1] = n end
      end
      assert.are.same(expect, c.value, "window " .. c.start)
    end
    assert.are.equal(991, closed[1].start)
    assert.are.equal(1015, closed[#closed].start)   -- [1015, 1025) ended before 1030
    assert.are.equal(25, #closed)                    -- starts 991..1015
    assert.are.same({}, late)
    t:close()
  end)

  it("tumbling: exact counts per window, each closed once", function()
    local t, closed, _, ev = setup_app("tumb", function(tb)
      return tb:tumbling(60, { expires = 10 }):relative_to_field("ts")
    end)
    local n = 0
    for minute = 0, 4 do
      for i = 1, minute + 1 do
        n = n + 1
        t:send(ev, { key = "u", value = { k = "u", ts = 6000 + minute * 60 + i, n = n } })
      end
    end
    t:send(ev, { key = "u", value = { k = "u", ts = 6000 + 5 * 60 + 30, n = 99 } })
    t:run()
    t:advance(3)
    by_start(closed)
    local counts = {}
    for _, c in ipairs(closed) do counts[#counts + 1] = c.value end
    -- stream time 6330: windows with end + 10 < 6330 closed (the fifth ends at 6300).
    assert.are.same({ 1, 2, 3, 4, 5 }, counts)
    t:close()
  end)

  it("sliding: a window per event time holding the events of the next `size` seconds", function()
    local t, closed, _, ev = setup_app("slide", function(tb)
      return tb:sliding(5, { expires = 0 }):relative_to_field("ts")
    end, true)
    for n, ts in ipairs { 100, 102, 104, 106, 120 } do
      t:send(ev, { key = "x", value = { k = "x", ts = ts, n = n } })
    end
    t:run()
    t:advance(2)
    by_start(closed)
    local got = {}
    for _, c in ipairs(closed) do got[#got + 1] = { c.start, c.value } end
    assert.are.same({ { 100, { 1, 2, 3 } }, { 102, { 2, 3, 4 } }, { 104, { 3, 4 } }, { 106, { 4 } } }, got)
    t:close()
  end)

  it("counts a late event, hands it to on_late, and does not re-open its window", function()
    local t, closed, late, ev, tb = setup_app("late", function(tb)
      return tb:tumbling(10, { expires = 0 }):relative_to_field("ts")
    end)
    t:send(ev, { key = "a", value = { k = "a", ts = 100, n = 1 } })
    t:send(ev, { key = "a", value = { k = "a", ts = 125, n = 2 } })
    t:run()
    t:advance(2)
    assert.are.equal(1, #closed)
    t:send(ev, { key = "a", value = { k = "a", ts = 105, n = 3 } })   -- window [100,110) closed
    t:run()
    t:advance(2)
    assert.are.same({ 3 }, late)
    assert.are.equal(1, #closed)
    assert.are.equal(1, require("fstream.table").state(tb).window.late)
    t:close()
  end)

  it("reads epoch seconds, epoch milliseconds and ISO-8601 field times alike", function()
    assert.are.equal(1719503023.315342, window.parse_time("2024-06-27T15:43:43.315342"))
    assert.are.equal(1719503023, window.parse_time("2024-06-27 15:43:43"))
    assert.are.equal(1719503023, window.parse_time("2024-06-27T17:43:43+02:00"))
    assert.are.equal(1719503023.5, window.parse_time(1719503023500))
    assert.are.equal(1719503023, window.parse_time(1719503023))
    assert.is_nil(window.parse_time("yesterday"))
    local t, closed, _, ev = setup_app("iso", function(tb)
      return tb:tumbling(10, { expires = 0 }):relative_to_field("ts")
    end)
    t:send(ev, { key = "a", value = { k = "a", ts = "2024-06-27T15:43:41.1", n = 1 } })
    t:send(ev, { key = "a", value = { k = "a", ts = 1719503028000, n = 2 } })
    t:send(ev, { key = "a", value = { k = "a", ts = 1719503050, n = 3 } })
    t:run()
    t:advance(2)
    assert.are.equal(1, #closed)
    assert.are.equal(1719503020, closed[1].start)
    assert.are.equal(2, closed[1].value)
    t:close()
  end)

  it("uses the message timestamp by default", function()
    local t, closed, _, ev = setup_app("streamtime", function(tb) return tb:tumbling(10) end)
    t:send(ev, { key = "a", value = { k = "a", n = 1 }, timestamp = 500 })
    t:send(ev, { key = "a", value = { k = "a", n = 2 }, timestamp = 505 })
    t:send(ev, { key = "a", value = { k = "a", n = 3 }, timestamp = 520 })
    t:run()
    t:advance(2)
    assert.are.equal(1, #closed)
    assert.are.same({ 500, 2 }, { closed[1].start, closed[1].value })
    t:close()
  end)

  it("closes relative_to_now windows on the fake clock", function()
    local t, closed, _, ev = setup_app("now", function(tb) return tb:tumbling(10):relative_to_now() end)
    t:send(ev, { key = "a", value = { k = "a", n = 1 } })
    t:send(ev, { key = "a", value = { k = "a", n = 2 } })
    t:run()
    assert.are.equal(0, #closed)
    t:advance(25)
    assert.are.equal(1, #closed)
    assert.are.equal(2, closed[1].value)
    t:close()
  end)

  it("refuses t[k] = v on a hopping table, pointing to update", function()
    local a = fstream.app("hopset", { topic_partitions = 1 })
    local tb = a:table("h", { default = 0 }):hopping(10, 5)
    local ev = a:topic("ev")
    local err
    a:agent("x", ev, function(s)
      for _ in s do err = select(2, pcall(function() tb["k"] = 1 end)) end
    end)
    local t = fstream.testing(a)
    t:send(ev, { key = "k", value = 1 })
    t:run()
    assert.matches("windowed table 'h' is hopping: an event belongs to several windows; use h:update", err)
    t:close()
  end)

  it("reads a key's windows with value(), delta() and windows()", function()
    local a = fstream.app("wset", { topic_partitions = 1 })
    local tb = a:table("c", { default = 0 }):tumbling(10, { expires = 60 }):relative_to_field("ts")
    local ev = a:topic("ev")
    local reads = {}
    a:agent("x", ev, function(s)
      for v in s do
        tb["k"] = tb["k"]:value() + 1
        reads[#reads + 1] = { tb["k"]:value(), tb["k"]:delta(10) }
      end
    end)
    local t = fstream.testing(a)
    for _, ts in ipairs { 100, 101, 112 } do t:send(ev, { key = "k", value = { ts = ts } }) end
    t:run()
    assert.are.same({ { 1, 0 }, { 2, 0 }, { 1, 2 } }, reads)
    local ws = tb["k"]:windows()
    assert.are.same({ 100, 110 }, { ws[1].start, ws[2].start })
    t:close()
  end)

  it("keeps windows for every key, whatever its name: methods, fields, window-set names, numbers", function()
    local json = require("fstream.core").json
    local KEYS = { "update", "name", "window", "parts", "default", "app", "id", "partitions", "changelog", "items",
      "get", "set", "delete", "tumbling", "relative_to_field", "value", "current", "now", "delta", "windows",
      "table", "key", "__index", "__newindex", "_on", "_private", 1, 2.5 }
    local a = fstream.app("wkeys", { topic_partitions = 1 })
    local closed = {}
    local tb = a:table("w", { default = 0, on_window_close = function(key, win, value)
      closed[json.encode(key)] = { win.start, value }
    end }):tumbling(10, { expires = 0 }):relative_to_field("ts")
    local ev = a:topic("ev")
    local reads = {}
    a:agent("x", ev, function(s)
      for v in s do
        if v.set then tb[v.k] = v.set else tb:update(v.k, function(c) return c + 1 end) end
        local ws = tb[v.k]
        reads[json.encode(v.k)] = { ws:value(), ws:current(), #ws:windows() }
      end
    end)
    local t = fstream.testing(a)
    local want_reads, want_items, want_closed = {}, {}, {}
    for i, k in ipairs(KEYS) do
      for j = 1, i do t:send(ev, { key = "p", value = { k = k, ts = 100 + j / 100 } }) end
      local n = k == "name" and 42 or i
      want_reads[json.encode(k)] = { n, n, 1 }
      want_items[json.encode { k, 100 }] = n
      want_closed[json.encode(k)] = { 100, n }
    end
    t:send(ev, { key = "p", value = { k = "name", ts = 109, set = 42 } })   -- tumbling: t[k] = v
    t:run()
    assert.are.same(want_reads, reads)
    -- items(): the user's windows only, not the partition's stream time.
    local items = {}
    for k, v in tb:items() do items[json.encode(k)] = v end
    assert.are.same(want_items, items)
    t:send(ev, { key = "p", value = { k = "later", ts = 125 } })
    t:run()
    t:advance(2)
    assert.are.same(want_closed, closed)
    local s = require("fstream.table").state(tb)
    assert.are.equal(1, s.partitions)
    assert.are.equal("tumbling", s.window.kind)
    assert.are.equal(0, s.window.late)
    t:close()
  end)

  it("lets on_window_close send to a topic", function()
    local a = fstream.app("wsend", { topic_partitions = 1 })
    local out = a:topic("stats")
    local tb = a:table("c", { default = 0, on_window_close = function(key, win, value)
      out:send { key = key, value = { user = key, start = win.start, count = value } }
    end }):tumbling(10):relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("x", ev, function(s) for v in s do tb:update(v.u, function(c) return c + 1 end) end end)
    local t = fstream.testing(a)
    for _, e in ipairs { { "a", 1 }, { "b", 2 }, { "a", 3 }, { "a", 30 } } do
      t:send(ev, { key = "k", value = { u = e[1], ts = e[2] } })
    end
    t:run()
    t:advance(2)
    local got = t:outputs(out)
    table.sort(got, function(x, y) return x.user < y.user end)
    assert.are.same({ { user = "a", start = 0, count = 2 }, { user = "b", start = 0, count = 1 } }, got)
    t:close()
  end)
end)

describe("hopping windows with combine (per step-slice aggregation)", function()
  local function run(combine)
    local a = fstream.app("comb" .. tostring(combine ~= nil), { topic_partitions = 1 })
    local closed = {}
    local tb = a:table("h", {
      default = function() return {} end,
      on_window_close = function(key, win, value)
        closed[#closed + 1] = { key = key, start = win.start, value = value }
      end,
    }):hopping(10, 2, { expires = 0, combine = combine }):relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("agg", ev, function(stream)
      for v in stream do tb:update(v.k, function(l) l[#l + 1] = v.n; return l end) end
    end)
    local t = fstream.testing(a)
    local n = 0
    for _, e in ipairs { { "a", 100 }, { "b", 101 }, { "a", 103.5 }, { "a", 104 }, { "b", 108 },
      { "a", 111 }, { "b", 115 }, { "a", 150 }, { "b", 150 } } do
      n = n + 1
      t:send(ev, { key = e[1], value = { k = e[1], ts = e[2], n = n } })
    end
    t:run()
    t:advance(2)
    t:close()
    table.sort(closed, function(x, y) return x.key < y.key or (x.key == y.key and x.start < y.start) end)
    return closed
  end

  it("closes the same windows with the same values as updating every window", function()
    local concat = function(x, y)
      local r = {}
      for _, v in ipairs(x) do r[#r + 1] = v end
      for _, v in ipairs(y) do r[#r + 1] = v end
      return r
    end
    local naive, sliced = run(nil), run(concat)
    assert.is_true(#naive > 10)
    assert.are.same(naive, sliced)
  end)
end)

describe("combine mode", function()
  it("closes a window as soon as stream time passes it, without waiting for the cleanup tick", function()
    local a = fstream.app("combprompt", { topic_partitions = 1, table_cleanup_interval = 3600 })
    local closed = {}
    local tb = a:table("h", { default = 0, on_window_close = function(k, w, v)
      closed[#closed + 1] = { w.start, v }
    end }):hopping(10, 5, { combine = function(x, y) return x + y end }):relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("agg", ev, function(s) for v in s do tb:update("k", function(c) return c + 1 end) end end)
    local t = fstream.testing(a)
    t:send(ev, { key = "k", value = { ts = 101 } })
    t:send(ev, { key = "k", value = { ts = 107 } })
    t:send(ev, { key = "k", value = { ts = 111 } })   -- passes the ends of [95,105) and [100,110)
    t:run()
    assert.are.same({ { 95, 1 }, { 100, 2 } }, closed)
    t:send(ev, { key = "k", value = { ts = 116 } })   -- passes [105,115)
    t:run()
    assert.are.same({ { 95, 1 }, { 100, 2 }, { 105, 2 } }, closed)
    t:close()
  end)
end)

describe("hopping 60/1 with combine or merge, over random event times", function()
  -- The reference updates every window, each holding its events; the sliced
  -- paths keep one string per slice and join them: string concatenation is
  -- not commutative, so a fold that takes slices out of order, misses one or
  -- counts one twice gives another text. About a fifth of the events come up
  -- to 9 s behind (expires 5): some are late, the others write to slices the
  -- close passes have already folded.
  local function run(mode, seed)
    local a = fstream.app("rnd-" .. mode, { topic_partitions = 2 })
    local closed, reads, late = {}, {}, 0
    local opts = { expires = 5 }
    if mode == "combine" then
      opts.combine = function(x, y) return x .. y end
    elseif mode == "merge" then
      opts.merge = function(values) return table.concat(values) end
    end
    -- Events of a window as a slice fold sees them: by slice, then in arrival order.
    local function text(l)
      if type(l) == "string" then return l end
      local sorted = {}
      for i, e in ipairs(l) do sorted[i] = e end
      table.sort(sorted, function(x, y) return x.u < y.u or (x.u == y.u and x.n < y.n) end)
      local parts = {}
      for i, e in ipairs(sorted) do parts[i] = e.n .. "," end
      return table.concat(parts)
    end
    local tb = a:table("h", {
      default = mode == "every" and function() return {} end or "",
      on_late = function() late = late + 1 end,
      on_window_close = function(key, win, v)
        closed[#closed + 1] = string.format("%s@%d=%s", key, win.start, text(v))
      end,
    }):hopping(60, 1, opts):relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("x", ev, function(s)
      for e in s do
        if mode == "every" then
          tb:update(e.k, function(l) l[#l + 1] = { u = math.floor(e.ts), n = e.n }; return l end)
        else
          tb:update(e.k, function(str) return str .. e.n .. "," end)
        end
        reads[#reads + 1] = text(tb[e.k]:value())
      end
    end)
    local t = fstream.testing(a)
    local x = seed
    local function rnd()
      x = (x * 1103515245 + 12345) % 2147483648
      return x / 2147483648
    end
    local keys, clock, n = { "a", "b", "c", "d" }, 1000, 0
    for _ = 1, 1200 do
      clock = clock + rnd() * 0.4
      local k = keys[1 + math.floor(rnd() * #keys)]
      local ts = clock
      if rnd() < 0.2 then ts = clock - rnd() * 9 end
      n = n + 1
      t:send(ev, { key = k, value = { k = k, ts = ts, n = n } })
    end
    for _, k in ipairs(keys) do -- moves every partition's stream time past every window
      n = n + 1
      t:send(ev, { key = k, value = { k = k, ts = clock + 500, n = n } })
    end
    t:run()
    t:close()
    table.sort(closed)
    return closed, reads, late
  end

  for _, seed in ipairs { 1, 77, 4242 } do
    it("closes the windows updating every window closes, with the same values, in slice order (seed " .. seed .. ")", function()
      local c_every, r_every, l_every = run("every", seed)
      local c_comb, r_comb, l_comb = run("combine", seed)
      local c_merge, r_merge, l_merge = run("merge", seed)
      assert.is_true(#c_every > 600, #c_every)
      assert.is_true(l_every > 0 and l_every < 200, l_every)
      assert.are.same(c_every, c_comb)
      assert.are.same(c_every, c_merge)
      assert.are.equal(l_every, l_comb)
      assert.are.equal(l_every, l_merge)
      assert.are.same(r_every, r_comb)
      assert.are.same(r_every, r_merge)
    end)
  end

  it("calls combine at most 3 times per closed window (not size/step - 1)", function()
    local a = fstream.app("ncomb", { topic_partitions = 1 })
    local calls, closes = 0, 0
    local tb = a:table("h", { default = 0, on_window_close = function() closes = closes + 1 end })
      :hopping(60, 1, { expires = 2, combine = function(x, y) calls = calls + 1; return x + y end })
      :relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("x", ev, function(s) for e in s do tb:update("k", function(c) return c + 1 end) end end)
    local t = fstream.testing(a)
    for i = 0, 3000 do t:send(ev, { key = "k", value = { ts = 1000 + i / 5 } }) end
    t:run()
    t:close()
    assert.is_true(closes > 500, closes)
    assert.is_true(calls <= 3 * closes, calls .. " combine calls for " .. closes .. " closes")
  end)
end)

describe("hopping merge option", function()
  it("is refused with combine, or when it is not a function", function()
    local a = fstream.app("mergeopt", { topic_partitions = 1 })
    assert.has_error(function()
      a:table("x"):hopping(10, 1, { merge = function(v) return v end, combine = function(x) return x end })
    end, "hopping: give combine or merge, not both")
    assert.has_error(function() a:table("y"):hopping(10, 1, { merge = 1 }) end)
    assert.has_error(function() a:table("z"):tumbling(10, { merge = function(v) return v end }) end)
  end)
end)

describe("out-of-order events", function()
  it("find closed windows closed in both the default and the combine path", function()
    local function run(combine)
      local a = fstream.app("ooo" .. tostring(combine ~= nil), { topic_partitions = 1 })
      local closed, late = {}, 0
      local tb = a:table("h", { default = 0, on_late = function() late = late + 1 end,
        on_window_close = function(_, w, v) closed[#closed + 1] = w.start .. "=" .. v end,
      }):hopping(4, 1, { expires = 0, combine = combine }):relative_to_field("ts")
      local ev = a:topic("ev")
      a:agent("x", ev, function(s) for v in s do tb:update("k", function(c) return c + 1 end) end end)
      local t = fstream.testing(a)
      for _, ts in ipairs { 100.5, 102.5, 101.5, 110 } do t:send(ev, { key = "k", value = { ts = ts } }) end
      t:run()
      t:close()
      return closed, late
    end
    local c1, l1 = run(nil)
    local c2, l2 = run(function(x, y) return x + y end)
    assert.are.same(c1, c2)
    assert.are.equal(l1, l2)
    assert.are.equal("97=1", c1[1])
    assert.are.equal(1, l1)
  end)
end)

describe("an event time no window can hold", function()
  -- Times whose windows cannot be computed exactly (huge, NaN) used to spin
  -- forever in the update; each must fail that one event and leave stream
  -- time alone. A count hook in the agent's coroutine turns a spin into a
  -- failure here instead of a hung spec run.
  local function run(configure)
    local a = fstream.app("absurd", { topic_partitions = 1 })
    local late = 0
    local tb = configure(a:table("w", { default = 0, on_late = function() late = late + 1 end }))
      :relative_to_field("ts")
    local ev = a:topic("ev")
    local results = {}
    a:agent("x", ev, function(s)
      debug.sethook(function() error("spun: did not terminate", 2) end, "", 5e7)
      for v in s do
        if v.ts == "nan" then v.ts = 0 / 0 elseif v.ts == "-inf" then v.ts = -math.huge end
        local ok, err = pcall(function() return tb:update("k", function(c) return c + 1 end) end)
        local ok2, err2 = pcall(function() return tb["k"]:delta(1e300) end)
        results[#results + 1] = { ok = ok, err = err, read_ok = ok2, read_err = err2 }
      end
    end)
    local t = fstream.testing(a)
    local times = { 1e300, -1e300, 1e24, -1e21, "nan", "-inf", 1000.5 }
    for _, ts in ipairs(times) do t:send(ev, { key = "k", value = { ts = ts } }) end
    t:run()
    local value = tb["k"]:windows()
    t:close()
    return results, value, late
  end

  for name, configure in pairs {
    tumbling = function(tb) return tb:tumbling(10) end,
    hopping = function(tb) return tb:hopping(10, 1) end,
    ["hopping with combine"] = function(tb) return tb:hopping(10, 1, { combine = function(x, y) return x + y end }) end,
    sliding = function(tb) return tb:sliding(10) end,
  } do
    it(name .. ": 1e300, -1e300, 1e24, -1e21, NaN and -inf raise at once; later events are processed", function()
      local results, windows, late = run(configure)
      assert.are.equal(7, #results)
      for i = 1, 6 do
        assert.is_false(results[i].ok, "event " .. i)
        -- Refused as outside the years a time may have (the range check on
        -- event times comes first; the window range's own bound backs it up).
        local msg = results[i].err
        assert.is_truthy(msg:match("windowed table 'w': .* is outside the years 1970%.%.9999")
          or msg:match("windowed table 'w': field 'ts': not a finite number"), msg)
        assert.is_false(results[i].read_ok, "read of event " .. i)
      end
      -- The good event after them is neither late nor lost: stream time did not move.
      assert.is_true(results[7].ok, tostring(results[7].err))
      assert.are.equal(0, late)
      assert.is_true(#windows >= 1)
      for _, w in ipairs(windows) do assert.are.equal(1, w.value) end
    end)
  end
end)

describe("an on_window_close that runs without yielding", function()
  it("is interrupted after agent_timeout and later windows of the partition still close", function()
    local a = fstream.app("closespin", { topic_partitions = 1, agent_timeout = 0.3 })
    local closed = {}
    local tb = a:table("w", { default = 0, on_window_close = function(_, win, value)
      if win.start == 0 then while true do end end
      closed[#closed + 1] = win.start .. "=" .. value
    end }):tumbling(10):relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("x", ev, function(s) for v in s do tb:update("k", function(c) return c + 1 end) end end)
    local t = fstream.testing(a)
    local core = require "fstream.core"
    local path = os.tmpname()
    core.redirect_stderr(path)
    for _, ts in ipairs { 1, 15, 25, 35 } do t:send(ev, { key = "k", value = { ts = ts } }) end
    local ok, err = pcall(function()
      t:run()
      t:advance(2)
    end)
    core.redirect_stderr(nil)
    local log = io.open(path):read("a")
    os.remove(path)
    assert(ok, err)
    assert.matches("interrupted after running 0%.%d s without yielding %(agent_timeout%)", log)
    assert.are.same({ "10=1", "20=1" }, closed)
    t:close()
  end)
end)
