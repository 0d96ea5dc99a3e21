-- group_by inside the agent with a real worker on a standalone embedded
-- broker: the worker learns the repartition topic when the agent first asks
-- for it, and the totals stay exact across a clean restart.
local proc = require "spec.support.proc"
local Orders = require "spec.support.orders"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local core = require "fstream.core"


local orders, sum = Orders.lines, Orders.sum

-- Runs the fixture twice on one store (more orders arrive between the runs)
-- and checks the totals after each clean stop. Returns both workers' logs and
-- how many messages the repartition topic holds.
local function two_runs(name, late)
  local broker, addr = proc.broker({}, 4)
  local env = { APP_ID = name .. "-" .. uniq, IN = name .. "-in-" .. uniq }
  local rep = env.APP_ID .. "-process-account-repartition"
  local store = proc.tmp .. "/" .. name .. "-" .. uniq
  local cmd = string.format("env APP_ID=%s IN=%s %s %s", env.APP_ID, env.IN, late and "LATE=1" or "", bin)
  local function start()
    return proc.spawn(string.format("%s worker %s/groupby_agent.lua --broker kafka://%s --store lmdb://%s -l info",
      cmd, fixtures, addr, store), "worker-" .. name)
  end
  local function dump() return Orders.totals(cmd, fixtures .. "/groupby_agent.lua", store) end
  local function run_until(n)
    local w = start()
    Orders.wait_sum(dump, n, w, 90)
    proc.sleep(1) -- anything beyond n would show now
    assert.are.equal(0, w:stop(), w:output())
    return w:output()
  end

  local expect = {}
  proc.produce_lines(addr, env.IN, orders(1, 2000, expect), { key_delim = "\t" })
  local log1 = run_until(sum(expect))
  assert.are.same(expect, (dump()))

  -- A restart learns the topic again; more orders arrived meanwhile.
  proc.produce_lines(addr, env.IN, orders(2001, 3000, expect), { key_delim = "\t" })
  local log2 = run_until(sum(expect))
  local got, parts = dump()
  local forwarded = proc.count_messages(addr, rep)
  broker:stop()
  assert.are.same(expect, got)
  -- Each account's entry is in the partition of its key on the repartition topic.
  for acct, p in pairs(parts) do assert.are.equal(core.partition_for(acct, 4), p) end
  return log1, log2, forwarded, rep
end

describe("group_by inside the agent, end to end", function()
  it("counts exactly, and after a clean restart still exactly, forwarding each order once", function()
    local log1, log2, forwarded, rep = two_runs("gba", false)
    -- The agent's first steps run before the worker joins its group: the first
    -- subscription has the repartition topic, and the banner shows it.
    for _, log in ipairs { log1, log2 } do
      assert.matches("agents +process <%- [%w%-]+ => " .. rep:gsub("%-", "%%-"), log)
      assert.not_matches("subscription changed", log)
    end
    assert.are.equal(3000, forwarded)
  end)

  it("stays exact when the agent regroups only after the worker joined (a resubscription)", function()
    local log1, log2, forwarded, rep = two_runs("gbl", true)
    for _, log in ipairs { log1, log2 } do
      assert.matches("agent process reads " .. rep:gsub("%-", "%%-") .. ": subscribed to it", log)
      -- Eager: everything is revoked and assigned again; cooperative (the
      -- default): the repartition topic's partitions are only added.
      assert.truthy(log:match("revoking %d+ partitions") or log:match("assigned 4 partitions %(incremental%)"), log)
    end
    assert.are.equal(3000, forwarded)
  end)

  it("keeps the subscription and the totals across a hot reload (the new version learns the topic before it subscribes)", function()
    local broker, addr = proc.broker({}, 4)
    local name = "gbr"
    local env = { APP_ID = name .. "-" .. uniq, IN = name .. "-in-" .. uniq }
    local dir = proc.tmp .. "/" .. name .. "-" .. uniq
    os.execute("mkdir -p " .. proc.quote(dir))
    local script = dir .. "/app.lua"
    local function version(v)
      return string.format([[
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID"), { topic_partitions = 4, commit_interval = 0.5 })
local orders = app:topic(os.getenv("IN"))
local totals = app:table("totals", { default = 0 })
app:agent("process", orders, function(stream)
  for o in stream:group_by("account") do totals[o.account] = totals[o.account] + o.amount end -- %s
end)
]], v)
    end
    proc.write(script, version("v1"))
    local cmd = string.format("env APP_ID=%s IN=%s %s", env.APP_ID, env.IN, bin)
    local store = dir .. "/store"
    local function dump() return (Orders.totals(cmd, script, store)) end
    local function wait_sum(n, w) Orders.wait_sum(dump, n, w) end
    local w = proc.spawn(string.format("%s worker %s --broker kafka://%s --store lmdb://%s -l info",
      cmd, script, addr, store), "worker-" .. name)
    local expect = {}
    proc.produce_lines(addr, env.IN, orders(1, 1000, expect), { key_delim = "\t" })
    wait_sum(sum(expect), w)
    proc.write(script, version("v2"))
    w:signal("HUP")
    assert.truthy(w:wait_for("reloaded [^\n]*app%.lua in %d+ ms", 30), w:output())
    proc.produce_lines(addr, env.IN, orders(1001, 2000, expect), { key_delim = "\t" })
    wait_sum(sum(expect), w)
    proc.sleep(1)
    assert.are.equal(0, w:stop(), w:output())
    local forwarded = proc.count_messages(addr, env.APP_ID .. "-process-account-repartition")
    broker:stop()
    assert.are.same(expect, dump())
    assert.not_matches("subscription changed", w:output())
    assert.are.equal(2000, forwarded)
  end)

  it("runs a task's topic:stream() loop from the first subscription", function()
    local broker, addr = proc.broker({}, 4)
    local env = { APP_ID = "ts-" .. uniq, IN = "ts-in-" .. uniq, OUT = "ts-out-" .. uniq }
    proc.create_topics(addr, env.IN, env.OUT)
    proc.produce_lines(addr, env.IN, proc.numbers(1, 200))
    local w = proc.worker("task_stream.lua", env, addr, { create = false })
    local seen = proc.wait_all_seen(addr, env.OUT, "seen ", 200, 60)
    assert.are.equal(0, w:stop(), w:output())
    broker:stop()
    for i = 1, 200 do assert.are.equal(1, seen[i], "number " .. i) end
    assert.not_matches("subscription changed", w:output())
  end)
end)
