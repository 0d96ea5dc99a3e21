-- Session windows and idle_close on fstream.testing's fake clock, with exact
-- expectations.
local fstream = require "fstream"
local Table = require "fstream.table"

-- An app with one windowed table over topic "ev"; values {k=, ts=, n=}.
-- mode "count": update(k, c + 1); "set": t[k] = n.
local function setup_app(id, configure, mode, opts)
  opts = opts or {}
  local a = fstream.app(id, { topic_partitions = 1, table_cleanup_interval = 1.0 })
  local closed, late, reads = {}, {}, {}
  local ev = a:topic("ev")
  local tb = configure(a:table("w", {
    default = 0,
    on_window_close = function(key, win, value)
      closed[#closed + 1] = { key = key, start = win.start, ["end"] = win["end"], value = value }
    end,
    on_late = function(key, value) late[#late + 1] = { key, value.n } end,
  }))
  a:agent("agg", ev, function(stream)
    for v in stream do
      if mode == "set" then tb[v.k] = v.n
      else tb:update(v.k, function(c) return c + 1 end) end
      reads[#reads + 1] = tb[v.k]:current()
    end
  end)
  local t = fstream.testing(a, { clock = opts.clock or 1000 })
  return t, closed, late, ev, tb, reads
end

local function send(t, ev, k, ts, n)
  t:send(ev, { key = k, value = { k = k, ts = ts, n = n } })
end

describe("session windows", function()
  it("a bridging event merges two sessions, which close once with the merged value (combine)", function()
    local t, closed, late, ev, _, reads = setup_app("sess-merge", function(tb)
      return tb:session(10, { expires = 10, combine = function(a, b) return a + b end }):relative_to_field("ts")
    end, "count")
    send(t, ev, "a", 100, 1)
    send(t, ev, "a", 115, 2) -- 115 - 100 >= gap: a second session [115, 125)
    send(t, ev, "a", 108, 3) -- closer than 10 to both: [100, 125)
    t:run()
    t:advance(3)
    assert.are.same({}, closed)
    assert.are.same({ 1, 1, 3 }, reads) -- current(): the event's session after the update
    send(t, ev, "b", 200, 4) -- stream time 200: [100, 125) closes (125 + 10 < 200)
    t:run()
    t:advance(3)
    assert.are.same({ { key = "a", start = 100, ["end"] = 125, value = 3 } }, closed)
    assert.are.same({}, late)
    t:close()
  end)

  it("without combine, the session's value is the list of its events' values in time order", function()
    local t, closed, _, ev = setup_app("sess-list", function(tb)
      return tb:session(10, { expires = 10 }):relative_to_field("ts")
    end, "set")
    send(t, ev, "a", 100, "x")
    send(t, ev, "a", 104, "y")
    send(t, ev, "a", 115, "z")
    send(t, ev, "a", 108, "bridge")
    send(t, ev, "b", 300, "other")
    t:run()
    t:advance(3)
    assert.are.same({ { key = "a", start = 100, ["end"] = 125, value = { "x", "y", "bridge", "z" } } }, closed)
    t:close()
  end)

  it("events exactly gap apart are two sessions; each closes after its end + expires", function()
    local t, closed, _, ev = setup_app("sess-expiry", function(tb)
      return tb:session(10, { expires = 5 }):relative_to_field("ts")
    end, "count")
    send(t, ev, "a", 100, 1)
    send(t, ev, "a", 110, 2)  -- not closer than 10: [110, 120)
    send(t, ev, "b", 115, 3)  -- [100, 110) + 5 = 115: not behind stream time yet
    t:run()
    t:advance(2)
    assert.are.same({}, closed)
    send(t, ev, "b", 115.5, 4)
    t:run()
    assert.are.same({ { key = "a", start = 100, ["end"] = 110, value = { 1 } } }, closed)
    send(t, ev, "b", 125.5, 5) -- b's [115, 125.5) and a's [110, 120) due at 125.5 > 125
    t:run()
    assert.are.same({ 100, 110 }, { closed[1].start, closed[2].start })
    assert.are.equal(2, #closed)
    t:close()
  end)

  it("an event before the end of a closed session is late and never re-opens it", function()
    local t, closed, late, ev, tb = setup_app("sess-late", function(tb)
      return tb:session(10, { expires = 0 }):relative_to_field("ts")
    end, "count")
    send(t, ev, "a", 100, 1)
    send(t, ev, "b", 111, 2) -- closes a's [100, 110)
    send(t, ev, "a", 105, 3) -- its own session [105, 115) would still be open: late all the same
    send(t, ev, "a", 95, 4)  -- before the closed session
    send(t, ev, "a", 112, 5) -- after its end: a new session
    t:run()
    t:advance(2)
    assert.are.same({ { "a", 3 }, { "a", 4 } }, late)
    assert.are.equal(2, Table.state(tb).window.late)
    send(t, ev, "c", 200, 6)
    t:run()
    t:advance(2)
    local got = {}
    for _, c in ipairs(closed) do got[#got + 1] = { c.key, c.start, c["end"], c.value } end
    table.sort(got, function(x, y) return x[2] < y[2] end)
    -- (No combine: each value is the list of the events' update results.)
    assert.are.same({ { "a", 100, 110, { 1 } }, { "b", 111, 121, { 1 } }, { "a", 112, 122, { 1 } } }, got)
    -- Stream time 200 is past every closed end + gap + expires: nothing is remembered
    -- for them any more, and an event there is late by its own time.
    assert.are.same({}, Table.state(tb).window.parts[0].marks)
    send(t, ev, "a", 185, 7)
    t:run()
    assert.are.same({ "a", 7 }, late[3])
    t:close()
  end)

  it("an event before a session's start moves its start; windows() lists the open sessions", function()
    local t, closed, _, ev, tb = setup_app("sess-start", function(tb)
      return tb:session(10, { expires = 30, combine = function(a, b) return a + b end }):relative_to_field("ts")
    end, "count")
    send(t, ev, "a", 100, 1)
    send(t, ev, "a", 95, 2)  -- out of order, closer than 10: [95, 110)
    send(t, ev, "a", 130, 3) -- another session [130, 140)
    t:run()
    -- windows() from outside an agent: every partition this worker holds.
    assert.are.same({ { start = 95, ["end"] = 110, value = 2 }, { start = 130, ["end"] = 140, value = 1 } },
      tb["a"]:windows())
    send(t, ev, "b", 200, 4)
    t:run()
    assert.are.same({ { key = "a", start = 95, ["end"] = 110, value = 2 }, { key = "a", start = 130, ["end"] = 140, value = 1 } }, closed)
    t:close()
  end)

  it("an update function that raises leaves no session behind", function()
    local a = fstream.app("sess-raise", { topic_partitions = 1 })
    local closed = {}
    local tb = a:table("s", { default = 0, on_window_close = function(k, w, v) closed[#closed + 1] = { k, w.start, v } end })
      :session(10, { expires = 0, combine = function(x, y) return x + y end }):relative_to_field("ts")
    local ev = a:topic("ev")
    a:agent("x", ev, function(s)
      for v in s do
        pcall(function()
          tb:update(v.k, function(c)
            if v.boom then error("boom") end
            return c + 1
          end)
        end)
      end
    end)
    local t = fstream.testing(a, { clock = 1000 })
    t:send(ev, { value = { k = "a", ts = 100, boom = true } })
    t:send(ev, { value = { k = "b", ts = 101 } })
    t:send(ev, { value = { k = "a", ts = 105 } })
    t:send(ev, { value = { k = "c", ts = 200 } })
    t:run()
    table.sort(closed, function(x, y) return x[1] < y[1] end)
    assert.are.same({ { "a", 105, 1 }, { "b", 101, 1 } }, closed)
    t:close()
  end)

  it("closes relative_to_now sessions on the fake clock", function()
    local t, closed, _, ev = setup_app("sess-now", function(tb)
      return tb:session(5, { combine = function(a, b) return a + b end }):relative_to_now()
    end, "count")
    send(t, ev, "a", 0, 1)
    t:run()
    t:advance(3)
    send(t, ev, "a", 0, 2) -- 3 s later: the same session, now ending 5 s from here
    t:run()
    t:advance(4.5)
    assert.are.same({}, closed)
    t:advance(2)
    assert.are.equal(1, #closed)
    assert.are.same({ 1000, 1008, 2 }, { closed[1].start, closed[1]["end"], closed[1].value })
    t:close()
  end)

  it("refuses a bad gap, a combine that is not a function, an unknown option and t[k] = nil", function()
    local a = fstream.app("sess-opts", { topic_partitions = 1 })
    assert.has_error(function() a:table("x1"):session(0) end, "session gap must be a positive number of seconds")
    assert.has_error(function() a:table("x2"):session(5, { combine = 1 }) end,
      "session: combine must be a function(a, b) -> a and b combined")
    assert.has_error(function() a:table("x3"):session(5, { size = 1 }) end, "session: unknown option 'size'")
    assert.has_error(function() a:table("x4"):tumbling(5, { idle_close = -1 }) end,
      "tumbling: idle_close must be a positive number of seconds")
    local tb = a:table("s"):session(5)
    local ev = a:topic("ev")
    local err
    a:agent("x", ev, function(s) for _ in s do err = select(2, pcall(function() tb["k"] = nil end)) end end)
    local t = fstream.testing(a)
    t:send(ev, { key = "k", value = 1 })
    t:run()
    assert.matches("session table 's': a session takes values", err)
    t:close()
  end)
end)

describe("idle_close", function()
  local kinds = {
    tumbling = function(tb, o) return tb:tumbling(10, o) end,
    hopping = function(tb, o) return tb:hopping(10, 5, o) end,
    ["hopping with combine"] = function(tb, o)
      o.combine = function(a, b) return a + b end
      return tb:hopping(10, 5, o)
    end,
    sliding = function(tb, o) return tb:sliding(10, o) end,
    session = function(tb, o)
      o.combine = function(a, b) return a + b end
      return tb:session(10, o)
    end,
  }
  for _, kind in ipairs { "tumbling", "hopping", "hopping with combine", "sliding", "session" } do
    it(kind .. ": closes the last window with no further input once the partition is quiet", function()
      local t, closed, late, ev = setup_app("idle-" .. kind:gsub(" ", "-"), function(tb)
        return kinds[kind](tb, { expires = 0, idle_close = 30 }):relative_to_field("ts")
      end, "count")
      send(t, ev, "a", 1001, 1)
      send(t, ev, "a", 1002, 2)
      t:run()
      -- Quiet for 29 s: stream time stays at 1002.
      t:advance(29)
      assert.are.same({}, closed)
      -- Quiet for 30 s: stream time follows the clock (1002 + 30), past every window's end.
      t:advance(2)
      assert.is_true(#closed >= 1)
      local total = 0
      for _, c in ipairs(closed) do
        assert.are.equal("a", c.key)
        assert.is_true(c["end"] <= 1032)
        total = total + c.value
      end
      -- Every window holding the events closed: tumbling/session one, hopping two, sliding two.
      assert.are.equal(({ tumbling = 2, session = 2, hopping = 4, ["hopping with combine"] = 4, sliding = 3 })[kind], total)
      -- The moved stream time stays: an event for a closed window is late.
      send(t, ev, "a", 1003, 3)
      t:run()
      assert.are.same({ { "a", 3 } }, late)
      t:close()
    end)
  end

  it("a partition with events more often than idle_close never moves with the clock", function()
    local t, closed, _, ev = setup_app("idle-busy", function(tb)
      return tb:tumbling(20, { expires = 0, idle_close = 10 }):relative_to_field("ts")
    end, "count")
    for i = 1, 6 do
      send(t, ev, "a", 1000 + i, i) -- event time moves 1 s per 9 s of clock: 54 s in all
      t:run()
      t:advance(9)
    end
    assert.are.same({}, closed)
    t:advance(20) -- quiet 29 s: stream time 1006 + 29, past 1020
    assert.are.equal(1, #closed)
    assert.are.same({ 1000, 6 }, { closed[1].start, closed[1].value })
    t:close()
  end)

  it("without idle_close a quiet partition's last window stays open", function()
    local t, closed, _, ev = setup_app("idle-off", function(tb)
      return tb:tumbling(10, { expires = 0 }):relative_to_field("ts")
    end, "count")
    send(t, ev, "a", 1001, 1)
    t:run()
    t:advance(600)
    assert.are.same({}, closed)
    t:close()
  end)
end)
