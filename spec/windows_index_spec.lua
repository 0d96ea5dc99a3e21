-- The index of open windows (runtime/state/fs_windows.c): closing order when many
-- windows are due at once, closes driven by the loop's timer with no event,
-- and updates that raise or nest. On fstream.testing's fake clock.
local fstream = require "fstream"
local json = require("fstream.core").json

local function app_with(id, configure, opts)
  opts = opts or {}
  local a = fstream.app(id, { topic_partitions = 1, table_cleanup_interval = opts.interval or 1.0 })
  local closed, late = {}, {}
  local ev = a:topic("ev")
  local tb = configure(a:table("w", {
    default = 0,
    on_window_close = function(key, win, value)
      closed[#closed + 1] = { key = key, start = win.start, ["end"] = win["end"], value = value }
    end,
    on_late = function(key) late[#late + 1] = key end,
  }))
  a:agent("agg", ev, opts.agent or function(stream)
    for v in stream do tb:update(v.k, function(c) return c + 1 end) end
  end, opts.agent_opts)
  return a, ev, tb, closed, late
end

local function keys_of(closed)
  local out = {}
  for i, c in ipairs(closed) do out[i] = string.format("%s@%s", json.encode(c.key), tostring(c.start)) end
  return out
end

describe("window index: closing order", function()
  it("many windows due in one event close by end, then by entry key", function()
    local a, ev, _, closed = app_with("order", function(tb)
      return tb:hopping(4, 1, { expires = 0 }):relative_to_field("ts")
    end)
    local t = fstream.testing(a)
    -- Keys whose JSON sorts differently from their arrival: "b", "a", "ab", 10, 9.
    for _, k in ipairs { "b", "a", "ab", 10, 9 } do
      t:send(ev, { key = "p", value = { k = k, ts = 100.2 } })
      t:send(ev, { key = "p", value = { k = k, ts = 100.8 } })
    end
    t:run()
    assert.are.same({}, closed)
    t:send(ev, { key = "p", value = { k = "z", ts = 200 } }) -- every window above is due
    t:run()
    -- 5 keys x windows starting 97..100 (4 each); by end, then by [key, start] bytes.
    local want = {}
    for s = 97, 100 do
      local kbs = {}
      for _, k in ipairs { "b", "a", "ab", 10, 9 } do kbs[#kbs + 1] = json.encode { k, s } end
      table.sort(kbs)
      for _, kb in ipairs(kbs) do
        local d = json.decode(kb)
        want[#want + 1] = string.format("%s@%s", json.encode(d[1]), tostring(d[2]))
      end
    end
    assert.are.same(want, keys_of(closed))
    for _, c in ipairs(closed) do
      assert.are.equal(c.start + 4, c["end"])
      local n = 0
      for _, ts in ipairs { 100.2, 100.8 } do if ts >= c.start and ts < c["end"] then n = n + 1 end end
      assert.are.equal(n, c.value, keys_of { c }[1])
    end
    t:close()
  end)

  it("sliding windows of several keys due at once close in end order", function()
    local a, ev, _, closed = app_with("slideorder", function(tb)
      return tb:sliding(5, { expires = 0 }):relative_to_field("ts")
    end)
    local t = fstream.testing(a)
    for _, e in ipairs { { "x", 103 }, { "y", 101 }, { "x", 100 }, { "y", 104 }, { "z", 102 } } do
      t:send(ev, { key = "p", value = { k = e[1], ts = e[2] } })
    end
    t:send(ev, { key = "p", value = { k = "q", ts = 120 } })
    t:run()
    local got = {}
    for _, c in ipairs(closed) do got[#got + 1] = c.key .. "@" .. c.start .. "=" .. c.value end
    -- x@100 arrives after x@103 and opens a window of its own; y@104 also
    -- counts in y@101. Due together at 120: by end.
    assert.are.same({ "x@100=1", "y@101=2", "z@102=1", "x@103=1", "y@104=1" }, got)
    t:close()
  end)
end)

describe("window index: closes on the loop's timer", function()
  it("closes a relative_to_now window once the clock passes its end, with no further event", function()
    local a, ev, _, closed = app_with("nowtimer", function(tb)
      return tb:tumbling(10, { expires = 2 }):relative_to_now()
    end)
    local t = fstream.testing(a, { clock = 1000 })
    t:run() -- the closer parks with nothing open: the new windows must wake it
    t:send(ev, { key = "k", value = { k = "a" } })
    t:send(ev, { key = "k", value = { k = "b" } })
    t:send(ev, { key = "k", value = { k = "a" } })
    t:run()
    t:advance(11.9) -- 1011.9: the window [1000, 1010) expires after 1012
    assert.are.same({}, closed)
    t:advance(1.2)  -- 1013.1
    assert.are.same({ '"a"@1000', '"b"@1000' }, keys_of(closed))
    assert.are.same({ 2, 1 }, { closed[1].value, closed[2].value })
    -- Nothing more is open: the clock moving on closes nothing twice.
    t:advance(60)
    assert.are.equal(2, #closed)
    t:close()
  end)

  it("closes windows opened at different times, each after its own end", function()
    local a, ev, _, closed = app_with("nowmany", function(tb)
      return tb:sliding(3, { expires = 0 }):relative_to_now()
    end, { interval = 0.5 })
    local t = fstream.testing(a, { clock = 2000 })
    t:send(ev, { key = "k", value = { k = "a" } })
    t:run()
    t:advance(1)
    t:send(ev, { key = "k", value = { k = "b" } })
    t:run()
    t:advance(2.6) -- 2003.6: a's window [2000, 2003) closed, b's [2001, 2004) not yet
    assert.are.same({ '"a"@2000.0' }, keys_of(closed))
    t:advance(1)
    assert.are.same({ '"a"@2000.0', '"b"@2001.0' }, keys_of(closed))
    t:close()
  end)
end)

describe("window index: a window due while another close pass runs", function()
  it("is closed by the timer once that pass ends, with no further event", function()
    local a = fstream.app("duebusy", { topic_partitions = 1, table_cleanup_interval = 1.0 })
    local closed = {}
    local tb = a:table("w", { default = 0, on_window_close = function(key, win, value)
      if win.start == 100 then fstream.sleep(5) end -- the agent's pass waits here
      closed[#closed + 1] = key .. "@" .. win.start .. "=" .. value
    end }):tumbling(10, { expires = 0 }):relative_to_field("ts")
    local ea, eb = a:topic("a"), a:topic("b")
    for name, topic in pairs { a = ea, b = eb } do
      a:agent(name, topic, function(stream)
        for v in stream do tb:update(v.k, function(c) return c + 1 end) end
      end)
    end
    local t = fstream.testing(a)
    t:send(ea, { key = "p", value = { k = "k", ts = 101 } })
    t:send(ea, { key = "p", value = { k = "j", ts = 112 } }) -- closes k@100: agent a sleeps in it
    t:run()
    assert.are.same({}, closed)
    -- Agent b passes j@110's end while a's pass is under way: it cannot close it.
    t:send(eb, { key = "p", value = { k = "x", ts = 130 } })
    t:run()
    assert.are.same({}, closed)
    t:advance(4)
    assert.are.same({}, closed)
    t:advance(3)
    assert.are.same({ "k@100=1", "j@110=1" }, closed)
    t:close()
  end)
end)

describe("window index: updates that raise or nest", function()
  it("an update function that raises leaves no window behind to close", function()
    local tbl
    local a, ev, tb, closed = app_with("raise", function(tb)
      return tb:tumbling(10, { expires = 0 }):relative_to_field("ts")
    end, {
      agent = function(stream)
        for v in stream do
          tbl:update(v.k, function(c)
            if v.boom then error("boom") end
            return c + 1
          end)
        end
      end,
      agent_opts = { on_error = "log" },
    })
    tbl = tb
    local t = fstream.testing(a)
    local core = require "fstream.core"
    local path = os.tmpname()
    core.redirect_stderr(path)
    local ok, err = pcall(function()
      t:send(ev, { key = "p", value = { k = "a", ts = 100 } })
      t:send(ev, { key = "p", value = { k = "b", ts = 101, boom = true } }) -- opens nothing
      t:send(ev, { key = "p", value = { k = "c", ts = 125, boom = true } }) -- moves stream time only
      t:send(ev, { key = "p", value = { k = "a", ts = 126 } })
      t:run()
      t:advance(5)
    end)
    core.redirect_stderr(nil)
    os.remove(path)
    assert(ok, err)
    assert.are.same({ '"a"@100' }, keys_of(closed))
    assert.are.equal(1, closed[1].value)
    assert.are.same({}, tbl.b:windows())
    t:close()
  end)

  it("an update inside another update's function of the same table keeps both", function()
    local tbl
    local a, ev, tb, closed = app_with("nested", function(tb)
      return tb:hopping(10, 5, { expires = 0 }):relative_to_field("ts")
    end, {
      agent = function(stream)
        for v in stream do
          tbl:update(v.k, function(c)
            tbl:update(v.k .. "-inner", function(d) return d + 10 end)
            return c + 1
          end)
        end
      end,
    })
    tbl = tb
    local t = fstream.testing(a)
    t:send(ev, { key = "p", value = { k = "a", ts = 101 } })
    t:send(ev, { key = "p", value = { k = "a", ts = 200 } })
    t:run()
    local got = {}
    for _, c in ipairs(closed) do got[#got + 1] = c.key .. "@" .. c.start .. "=" .. c.value end
    -- [95, 105) and [100, 110) of each: the outer function ran once per window,
    -- the inner update (both windows) once per outer call.
    assert.are.same({ "a@95=1", "a-inner@95=20", "a@100=1", "a-inner@100=20" }, got)
    t:close()
  end)
end)
