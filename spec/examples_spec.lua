-- Every example runs and shows something, driven by fstream.testing's fake clock.
local fstream = require "fstream"
local root = os.getenv("FSTREAM_ROOT") or "."

local function run_example(name, seconds)
  local printed = {}
  local saved = print
  _G.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring(select(i, ...)) end
    printed[#printed + 1] = table.concat(parts, "\t")
  end
  local ok, err = pcall(function()
    assert(loadfile(root .. "/examples/" .. name))()
    local app = fstream._apps[#fstream._apps]
    local t = fstream.testing(app)
    t:advance(seconds)
    t:close()
  end)
  _G.print = saved
  assert(ok, err)
  return printed
end

local function count(lines, pattern)
  local n = 0
  for _, l in ipairs(lines) do if l:match(pattern) then n = n + 1 end end
  return n
end

describe("examples", function()
  it("myagent.lua: the agent receives, yields, and every sink sees each value", function()
    local out = run_example("myagent.lua", 3)
    assert.are.equal(3, count(out, "^MYAGENT RECEIVED %-%- {"))
    assert.are.equal(3, count(out, "^AGENT YIELD: {"))
    assert.are.equal(3, count(out, "^AGENT B RECEIVED: {"))
  end)

  it("adding.lua: every Add yields a + b", function()
    local out = run_example("adding.lua", 5)
    local sent, yielded = {}, {}
    for _, l in ipairs(out) do
      local a, b = l:match("^sending Add%(a=(%d+), b=(%d+)%)")
      if a then sent[#sent + 1] = tonumber(a) + tonumber(b) end
      local s = l:match("^AGENT YIELD: (%d+)")
      if s then yielded[#yielded + 1] = tonumber(s) end
    end
    assert.are.equal(5, #sent)
    assert.are.same(sent, yielded)
  end)

  it("pipeline.lua: reports only orders above 1000", function()
    local out = run_example("pipeline.lua", 10)
    local n = 0
    for _, l in ipairs(out) do
      local total = l:match("^large order from a%d: %a+ for ([%d%.]+)$")
      assert(total, "unexpected line: " .. l)
      assert.is_true(tonumber(total) > 1000)
      n = n + 1
    end
    assert.is_true(n > 0, "100 random orders produced no large one")
  end)
end)

describe("table examples", function()
  it("wordcount.lua: counts grow and the top words are printed", function()
    local out = run_example("wordcount.lua", 10)
    local tops = {}
    for _, l in ipairs(out) do
      local rest = l:match("^top words: (.*)$")
      if rest then tops[#tops + 1] = rest end
    end
    assert.are.equal(2, #tops)
    local function sum(s) local n = 0 for c in s:gmatch("=(%d+)") do n = n + tonumber(c) end return n end
    assert.is_true(sum(tops[2]) > sum(tops[1]), "counts did not grow: " .. tops[1] .. " / " .. tops[2])
  end)

  it("wordcount.lua: counts words that name the table's own fields and methods like any word", function()
    assert(loadfile(root .. "/examples/wordcount.lua"))()
    local t = fstream.testing(fstream._apps[#fstream._apps])
    local text = {
      "the name of the table is not a word it counts",
      "update the items and get the set or delete the default",
      "partitions parts app id window changelog tumbling hopping sliding",
      "name name update items partitions the",
    }
    local expected, distinct = {}, 0
    for _, line in ipairs(text) do
      t:send("sentences", line)
      for w in line:gmatch("%a+") do
        if not expected[w] then distinct = distinct + 1 end
        expected[w] = (expected[w] or 0) + 1
      end
    end
    t:run()
    local counts = t:table("word_counts")
    for w, n in pairs(expected) do assert.are.equal(n, counts[w], w) end
    local got, n = {}, 0
    for w, c in counts:items() do got[w], n = c, n + 1 end
    assert.are.same(expected, got)
    assert.are.equal(distinct, n)
    t:close()
  end)

  it("withdrawals.lua: prints a running total for each user it has seen", function()
    local out = run_example("withdrawals.lua", 10)
    local last
    for _, l in ipairs(out) do
      local rest = l:match("^totals: (.*)$")
      if rest then last = rest end
    end
    assert.truthy(last, table.concat(out, "\n"))
    local n = 0
    for _ in last:gmatch("%a+=[%d%.]+") do n = n + 1 end
    assert.is_true(n >= 3, last)
  end)

  it("withdrawals.lua: each country's closed window holds exactly the withdrawals of its 10 s (group_by inside the agent)", function()
    local out = run_example("withdrawals.lua", 40)
    local sent, windows = {}, 0
    for _, l in ipairs(out) do
      local country, amount, at = l:match("^sent %a+ (%u%u) ([%d%.]+) at ([%d%.]+)$")
      if country then sent[#sent + 1] = { country = country, amount = tonumber(amount), at = tonumber(at) } end
    end
    for _, l in ipairs(out) do
      local country, total, s, e = l:match("^country (%u%u): ([%d%.]+) withdrawn in %[(%d+), (%d+)%)$")
      if country then
        windows = windows + 1
        local expect = 0
        for _, w in ipairs(sent) do
          if w.country == country and w.at >= tonumber(s) and w.at < tonumber(e) then expect = expect + w.amount end
        end
        assert.is_true(math.abs(expect - tonumber(total)) < 0.006, l .. " (sent " .. expect .. ")")
      end
    end
    assert.is_true(windows >= 4, table.concat(out, "\n"))
  end)
end)

describe("window examples", function()
  it("page_views.lua: closed windows report per-user counts that add up to the window's events", function()
    local out = run_example("page_views.lua", 40)
    local windows, current = {}, nil
    for _, l in ipairs(out) do
      local n = l:match("^window %d%d:%d%d:%d%d%.%.%d%d:%d%d:%d%d: (%d+) events$")
      if n then current = { total = tonumber(n), sum = 0 }; windows[#windows + 1] = current end
      local c = l:match("^  UserStats%(user_id=User%d, count=(%d+)%)$")
      if c then current.sum = current.sum + tonumber(c) end
    end
    assert.is_true(#windows >= 2, table.concat(out, "\n"))
    local total = 0
    for _, w in ipairs(windows) do
      assert.are.equal(w.total, w.sum)
      total = total + w.total
    end
    assert.are.equal(0, total % 20)   -- whole batches of 20 events fall into windows
  end)

  it("forecast.lua: one forecast per second, close to the rising trend", function()
    local out = run_example("forecast.lua", 20)
    local full = {}
    for _, l in ipairs(out) do
      local samples, ws, we, f = l:match("^sensor%-1: (%d+) samples in %[(%d+), (%d+)%) %-> forecast ([%-%d%.]+) at %d+$")
      if samples then
        assert.are.equal(10, tonumber(we) - tonumber(ws))
        assert.is_true(tonumber(samples) <= 40)
        if tonumber(samples) == 40 then full[#full + 1] = tonumber(f) end
      end
    end
    assert.is_true(#full >= 5, table.concat(out, "\n"))
    -- The sensor rises 2 units a second: forecasts a second apart differ by about 2.
    for i = 2, #full do
      assert.is_true(math.abs(full[i] - full[i - 1] - 2) < 0.6, full[i - 1] .. " -> " .. full[i])
    end
  end)
end)

describe("session example", function()
  it("sessions.lua: a late click merges two sessions; idle_close closes the last one with no further click", function()
    local out = run_example("sessions.lua", 40)
    assert.are.same({
      "session of ana: 4 clicks, +0.0 s .. +8.0 s",
      "session of bo: 3 clicks, +0.0 s .. +14.0 s",
      "session of ana: 2 clicks, +20.0 s .. +27.0 s",
    }, out)
  end)
end)

describe("stream examples", function()
  it("join.lua: orders carry their customer once known; clicks pair with exactly the views of their ad within 5 s", function()
    local out = run_example("join.lua", 20)
    local names = { c1 = "Ada", c2 = "Bo", c3 = "Cy" }
    local orders, pairs_, alone = 0, {}, {}
    for _, l in ipairs(out) do
      local n, who = l:match("^order o(%d+): %d x %a+ for (.+)$")
      if n then
        orders = orders + 1
        n = tonumber(n)
        local c = "c" .. (n % 4 + 1)
        -- Customer n is sent in second n, before that second's order.
        local known = names[c] and tonumber(c:sub(2)) <= n
        assert.are.equal(known and names[c] or "a customer not known yet", who, l)
      end
      local k, v = l:match("^click k(%d+) on ad%d: seen in view v(%d+)")
      if k then pairs_[#pairs_ + 1] = k .. "|" .. v end
      k = l:match("^click k(%d+) on ad%d: no view within 5 s$")
      if k then alone[#alone + 1] = k end
    end
    assert.are.equal(20, orders)
    -- The example's schedule: a view of ad (n % 3 + 1) in second n (none of
    -- ad3 in seconds 4..16), a click of ad (n % 3 + 1) in every even second.
    local expect = {}
    for c = 2, 20, 2 do
      for v = 1, 20 do
        local ad = v % 3 + 1
        if ad == c % 3 + 1 and not (ad == 3 and v >= 4 and v <= 16) and math.abs(c - v) <= 5 then
          expect[#expect + 1] = c .. "|" .. v
        end
      end
    end
    table.sort(expect)
    table.sort(pairs_)
    assert.are.same(expect, pairs_)
    assert.are.same({ "8" }, alone)
  end)

  it("orders.lua: per-account totals after group_by inside the agent", function()
    local out = run_example("orders.lua", 11)
    local last
    for _, l in ipairs(out) do last = l:match("^totals: (.*)$") or last end
    assert.truthy(last, table.concat(out, "\n"))
    local n = 0
    for _ in last:gmatch("account%-%d=[%d%.]+") do n = n + 1 end
    assert.is_true(n >= 3, last)
  end)

  it("dlq.lua: invalid payments reach the DLQ, busy ones succeed on attempt 2", function()
    local core = require "fstream.core"
    local path = os.tmpname()
    core.redirect_stderr(path)
    local ok, out = pcall(run_example, "dlq.lua", 12)
    core.redirect_stderr(nil)
    os.remove(path)
    assert(ok, out)
    local retried, dead_validation, dead_error = 0, 0, 0
    for _, l in ipairs(out) do
      if l:match("^charged payment %d+ .* on attempt 2$") then retried = retried + 1 end
      if l:match("^DLQ: .*Payment%.id: expected integer") then dead_validation = dead_validation + 1 end
      if l:match("^DLQ: .*amount must be positive") then dead_error = dead_error + 1 end
    end
    assert.is_true(retried >= 2, table.concat(out, "\n"))
    assert.is_true(dead_validation >= 2, table.concat(out, "\n"))
    assert.is_true(dead_error >= 1, table.concat(out, "\n"))
  end)
end)
