-- on_error = "dlq" and "retry": original bytes kept, failure described in headers.
local fstream = require "fstream"

local quietly = require "spec.support.stderr"

describe("on_error = dlq", function()
  it("sends a failing event's original bytes to <app>-<agent>-dlq with the error in headers", function()
    local a = fstream.app("dlq1", { topic_partitions = 2 })
    local orders = a:topic("orders")
    local ok = {}
    a:agent("check", orders, function(s)
      for o in s do
        if o.amount < 0 then error("negative amount " .. o.amount) end
        ok[#ok + 1] = o.amount
      end
    end, { on_error = "dlq" })
    local t = fstream.testing(a)
    t:send(orders, { key = "k1", value = { amount = 5 }, headers = { trace = "t1" } })
    t:send(orders, { key = "k1", value = { amount = -2 }, headers = { trace = "t2" } })
    t:send_raw(orders, '{"amount": ', { key = "k1" })
    t:send(orders, { key = "k1", value = { amount = 7 } })
    quietly(function() t:run() end)
    assert.are.same({ 5, 7 }, ok)
    local dead = t:messages("dlq1-check-dlq")
    assert.are.equal(2, #dead)
    -- Decode failures are found when a batch is taken, before the agent runs: no order.
    local d1, d2 = dead[1], dead[2]
    if d1.value == '{"amount": ' then d1, d2 = d2, d1 end
    assert.are.equal("k1", d1.key)
    assert.are.equal('{"amount":-2}', d1.value)
    assert.are.equal("t2", d1.headers.trace)
    assert.matches("negative amount %-2", d1.headers["fstream-error"])
    assert.matches("stack traceback", d1.headers["fstream-traceback"])
    assert.are.equal("orders", d1.headers["fstream-topic"])
    assert.are.equal("1", d1.headers["fstream-offset"])
    assert.matches("^%d$", d1.headers["fstream-partition"])
    assert.are.equal('{"amount": ', d2.value)              -- malformed JSON, byte for byte
    assert.matches("invalid JSON at byte 11", d2.headers["fstream-error"])
    t:close()
  end)
end)

describe("on_error = dlq with a record type", function()
  it("keeps the original bytes of a message that fails validation", function()
    local P = fstream.record("P", { id = "integer" })
    local a = fstream.app("dlqrec", { topic_partitions = 1 })
    local src = a:topic("src", { value_type = P })
    a:agent("v", src, function(s) for _ in s do end end, { on_error = "dlq" })
    local t = fstream.testing(a)
    t:send_raw(src, '{"id":"x"}', { key = "k", headers = { h = "1" } })
    quietly(function() t:run() end)
    local dead = t:messages("dlqrec-v-dlq")
    assert.are.equal(1, #dead)
    assert.are.equal('{"id":"x"}', dead[1].value)
    assert.are.equal("k", dead[1].key)
    assert.are.equal("1", dead[1].headers.h)
    assert.matches('P.id: expected integer, got "x"', dead[1].headers["fstream-error"])
    t:close()
  end)
end)

describe("on_error = retry", function()
  it("retries through <app>-<agent>-retry after the backoff and succeeds on attempt 2", function()
    local a = fstream.app("retry1", { topic_partitions = 1 })
    local jobs = a:topic("jobs")
    local tries, done = {}, {}
    a:agent("work", jobs, function(s)
      for j in s do
        tries[j.id] = (tries[j.id] or 0) + 1
        if j.id == "flaky" and tries[j.id] == 1 then error("service unavailable") end
        done[#done + 1] = j.id .. "@" .. tries[j.id]
      end
    end, { on_error = { "retry", attempts = 3, backoff = 2.0 } })
    local t = fstream.testing(a)
    t:send(jobs, { key = "a", value = { id = "flaky" } })
    t:send(jobs, { key = "a", value = { id = "steady" } })
    local log = quietly(function()
      t:run()
      assert.are.same({ "steady@1" }, done)      -- the retry waits for its backoff
      t:advance(1.0)
      assert.are.same({ "steady@1" }, done)
      t:advance(1.5)
    end)
    assert.are.same({ "steady@1", "flaky@2" }, done)
    assert.matches("failed %(attempt 1 of 3%), retrying in 2.0 s: .*service unavailable", log)
    assert.are.equal(0, #t:messages("retry1-work-dlq"))
    t:close()
  end)

  it("a retried event in the middle of a batch waits out its backoff too (values and items)", function()
    for _, mode in ipairs { "values", "items" } do
      local a = fstream.app("retry3" .. mode, { topic_partitions = 1 })
      local jobs = a:topic("jobs")
      local done = {}
      a:agent("work", jobs, function(s)
        if mode == "values" then
          for j in s do done[#done + 1] = j.id end
        else
          for _, j in s:items() do done[#done + 1] = j.id end
        end
      end, { on_error = { "retry", attempts = 3, backoff = 1.0 } })
      local t = fstream.testing(a)
      -- Three retries taken in one batch; the second is due in 2 s.
      local retry = "retry3" .. mode .. "-work-retry"
      local due = string.format("%.3f", t:now() + 2)
      t:send(retry, { key = "a", value = { id = "first" } })
      t:send(retry, { key = "a", value = { id = "second" }, headers = { ["fstream-not-before"] = due } })
      t:send(retry, { key = "a", value = { id = "third" } })
      t:run()
      assert.are.same({ "first" }, done, mode)
      t:advance(2.5)
      assert.are.same({ "first", "second", "third" }, done, mode)
      t:close()
    end
  end)

  it("sends an event that keeps failing to the DLQ after the last attempt", function()
    local a = fstream.app("retry2", { topic_partitions = 1 })
    local jobs = a:topic("jobs")
    local tries = 0
    a:agent("work", jobs, function(s)
      for _ in s do tries = tries + 1; error("always broken") end
    end, { on_error = { "retry", attempts = 3, backoff = 1.0 } })
    local t = fstream.testing(a)
    t:send(jobs, { key = "a", value = { id = 1 } })
    quietly(function()
      t:run()
      t:advance(10)
    end)
    assert.are.equal(3, tries)
    local dead = t:messages("retry2-work-dlq")
    assert.are.equal(1, #dead)
    assert.are.equal("2", dead[1].headers["fstream-attempt"])
    assert.are.equal("jobs", dead[1].headers["fstream-topic"])   -- the origin, not the retry topic
    assert.are.equal('{"id":1}', dead[1].value)
    t:close()
  end)
end)
