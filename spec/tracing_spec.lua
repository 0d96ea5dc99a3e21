-- W3C trace context: what an agent sends for an event carries a child span
-- of the event's traceparent (same trace id and flags, a new span id) and its
-- tracestate; outputs, repartitions, dead letters and retries alike.
local fstream = require "fstream"
local core = require "fstream.core"

local quietly = require "spec.support.stderr"

local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
local PARENT = "00-" .. TRACE .. "-00f067aa0ba902b7-01"
local STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

-- A child of PARENT: the same trace id and flags, a valid span id of its own.
local function assert_child(tp, parent, what)
  parent = parent or PARENT
  assert.is_string(tp, (what or "") .. ": no traceparent")
  local trace, span, flags = tp:match("^00%-(%x+)%-(%x+)%-(%x%x)$")
  assert.is_not_nil(trace, (what or "") .. ": malformed traceparent " .. tp)
  assert.are.equal(55, #tp)
  assert.are.equal(parent:sub(4, 35), trace, what)
  assert.are.equal(parent:sub(54, 55), flags, what)
  assert.are.equal(16, #span)
  assert.is_nil(span:find("[A-F]"), what)
  assert.are_not.equal(string.rep("0", 16), span, what)
  assert.are_not.equal(parent:sub(37, 52), span, what)
  return span
end

describe("tracing", function()
  it("gives send, send_and_wait and topic sinks a child span of the event's traceparent, with its tracestate", function()
    local a = fstream.app("tr1", { topic_partitions = 1 })
    local src, out, waited, sunk = a:topic("src"), a:topic("out"), a:topic("waited"), a:topic("sunk")
    a:agent("relay", src, function(s)
      for v in s do
        out:send { key = "k", value = v }
        waited:send_and_wait { key = "k", value = v, headers = { mine = "1" } }
      end
    end)
    a:agent("sinking", src, function(s) for v in s do coroutine.yield(v) end end, { sink = sunk })
    local t = fstream.testing(a)
    t:send(src, { key = "k", value = { n = 1 }, headers = { traceparent = PARENT, tracestate = STATE } })
    t:send(src, { key = "k", value = { n = 2 }, headers = { traceparent = PARENT } })
    t:run()
    local o, w = t:messages(out), t:messages(waited)
    assert.are.equal(2, #o)
    assert.are.equal(2, #w)
    local spans = {}
    for i, m in ipairs({ o[1], o[2], w[1], w[2] }) do
      spans[assert_child(m.headers.traceparent, nil, "output " .. i)] = true
    end
    assert.are.equal(STATE, o[1].headers.tracestate)
    assert.are.equal(STATE, w[1].headers.tracestate)
    assert.is_nil(o[2].headers.tracestate)   -- none on the event: none sent
    assert.are.equal("1", w[1].headers.mine) -- the app's headers stay
    local n = 0
    for _ in pairs(spans) do n = n + 1 end
    assert.are.equal(4, n)                   -- a new span id for every message
    t:close()
  end)

  it("carries nothing for an event without traceparent, with a malformed one, or from a task", function()
    local a = fstream.app("tr2", { topic_partitions = 1 })
    local src, out, from_task = a:topic("src"), a:topic("out"), a:topic("from_task")
    a:agent("relay", src, function(s)
      for v in s do out:send { key = "k", value = v } end
    end)
    a:task(function() from_task:send { key = "k", value = 1 } end)
    local t = fstream.testing(a)
    local bad = {
      "00-" .. TRACE .. "-00f067aa0ba902b7-0",             -- short
      "00-" .. TRACE:upper() .. "-00f067aa0ba902b7-01",     -- uppercase hex
      "00-" .. string.rep("0", 32) .. "-00f067aa0ba902b7-01", -- zero trace id
      "00-" .. TRACE .. "-0000000000000000-01",            -- zero span id
      "ff-" .. TRACE .. "-00f067aa0ba902b7-01",            -- version ff
      "00-" .. TRACE .. "-00f067aa0ba902b7-01-extra",      -- version 00 with more
      "garbage",
    }
    t:send(src, { key = "k", value = 0, headers = { other = "x" } })
    t:send(src, { key = "k", value = -1 })
    for i, tp in ipairs(bad) do
      t:send(src, { key = "k", value = i, headers = { traceparent = tp, tracestate = STATE } })
    end
    t:run()
    local o = t:messages(out)
    assert.are.equal(#bad + 2, #o)
    for _, m in ipairs(o) do
      assert.is_nil(m.headers and m.headers.traceparent, "for value " .. tostring(m.value))
      assert.is_nil(m.headers and m.headers.tracestate, "for value " .. tostring(m.value))
    end
    local ft = t:messages(from_task)
    assert.are.equal(1, #ft)
    assert.is_nil(ft[1].headers and ft[1].headers.traceparent)
    t:close()
  end)

  it("accepts a later version's traceparent and answers with version 00; leaves the app's own alone", function()
    local a = fstream.app("tr3", { topic_partitions = 1 })
    local src, out, own = a:topic("src"), a:topic("out"), a:topic("own")
    local MINE = "00-" .. string.rep("ab", 16) .. "-" .. string.rep("cd", 8) .. "-00"
    a:agent("relay", src, function(s)
      for v in s do
        out:send { key = "k", value = v }
        own:send { key = "k", value = v, headers = { traceparent = MINE } }
      end
    end)
    local t = fstream.testing(a)
    local later = "01-" .. TRACE .. "-00f067aa0ba902b7-03-future"
    t:send(src, { key = "k", value = 1, headers = { traceparent = later } })
    t:run()
    assert_child(t:messages(out)[1].headers.traceparent, later)
    assert.are.equal(MINE, t:messages(own)[1].headers.traceparent)
    t:close()
  end)

  it("gives group_by's repartitioned messages a child span, and the regrouped agent's outputs one of theirs", function()
    local a = fstream.app("tr4", { topic_partitions = 2 })
    local orders, out = a:topic("orders"), a:topic("out")
    a:agent("process", orders:group_by("account"), function(s)
      for v in s do out:send { key = v.account, value = v } end
    end)
    local b = fstream.app("tr4b", { topic_partitions = 2 })
    local orders_b, out_b = b:topic("orders"), b:topic("out")
    b:agent("inside", orders_b, function(s)
      for v in s:group_by("account") do out_b:send { key = v.account, value = v } end
    end)
    for _, case in ipairs({ { a, orders, out, "tr4-process-account-repartition" },
                            { b, orders_b, out_b, "tr4b-inside-account-repartition" } }) do
      local app, src, dst, rep_name = table.unpack(case)
      local t = fstream.testing(app)
      t:send(src, { key = "o1", value = { account = "x" }, headers = { traceparent = PARENT, tracestate = STATE } })
      t:send(src, { key = "o2", value = { account = "y" }, headers = { traceparent = "bad" } })
      t:run()
      local rep = t:messages(rep_name)
      assert.are.equal(2, #rep)
      table.sort(rep, function(p, q) return p.key < q.key end)
      local rspan = assert_child(rep[1].headers.traceparent, nil, rep_name)
      assert.are.equal(STATE, rep[1].headers.tracestate)
      assert.is_nil(rep[2].headers and rep[2].headers.traceparent) -- malformed: dropped, not copied
      assert.is_nil(rep[2].headers and rep[2].headers.tracestate)
      local o = t:messages(dst)
      assert.are.equal(2, #o)
      table.sort(o, function(p, q) return p.key < q.key end)
      local ospan = assert_child(o[1].headers.traceparent, rep[1].headers.traceparent, "output after " .. rep_name)
      assert.are_not.equal(rspan, ospan)
      assert.are.equal(STATE, o[1].headers.tracestate)
      assert.is_nil(o[2].headers and o[2].headers.traceparent)
      t:close()
    end
  end)

  it("gives dead letters and retries a child span; a malformed traceparent is not passed on", function()
    local a = fstream.app("tr5", { topic_partitions = 1 })
    local jobs, orders = a:topic("jobs"), a:topic("orders")
    a:agent("work", jobs, function(s)
      for _ in s do error("always broken") end
    end, { on_error = { "retry", attempts = 2, backoff = 1.0 } })
    a:agent("check", orders, function(s)
      for _ in s do error("bad order") end
    end, { on_error = "dlq" })
    local t = fstream.testing(a)
    t:send(jobs, { key = "a", value = 1, headers = { traceparent = PARENT, tracestate = STATE } })
    t:send(orders, { key = "a", value = 1, headers = { traceparent = PARENT, tracestate = STATE } })
    t:send(orders, { key = "b", value = 2, headers = { traceparent = "00-zz", tracestate = STATE, keep = "1" } })
    t:send(orders, { key = "c", value = 3 })
    quietly(function()
      t:run()
      t:advance(5)
    end)
    local retried = t:messages("tr5-work-retry")
    assert.are.equal(1, #retried)
    local rspan = assert_child(retried[1].headers.traceparent, nil, "retry")
    assert.are.equal(STATE, retried[1].headers.tracestate)
    -- The retried event failed again: its dead letter is a child of the retry.
    local dead = t:messages("tr5-work-dlq")
    assert.are.equal(1, #dead)
    assert.are_not.equal(rspan, assert_child(dead[1].headers.traceparent, retried[1].headers.traceparent, "dlq after retry"))
    local d = t:messages("tr5-check-dlq")
    assert.are.equal(3, #d)
    table.sort(d, function(p, q) return p.key < q.key end)
    assert_child(d[1].headers.traceparent, nil, "dead letter")
    assert.are.equal(STATE, d[1].headers.tracestate)
    assert.is_nil(d[2].headers.traceparent)
    assert.is_nil(d[2].headers.tracestate)
    assert.are.equal("1", d[2].headers.keep)
    assert.is_nil(d[3].headers.traceparent)
    t:close()
  end)

  it("core.trace_child checks and derives", function()
    assert_child(core.trace_child(PARENT))
    assert.is_nil(core.trace_child("00-" .. TRACE .. "-00f067aa0ba902b7-1x"))
    assert.is_nil(core.trace_child(nil))
    assert.is_nil(core.trace_child(42))
  end)
end)
