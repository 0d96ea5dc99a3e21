-- partition_assignor: the option, FSTREAM_PARTITION_ASSIGNOR, and what "auto"
-- (the default) picks — cooperative-sticky unless the app's tables need
-- co-partitioned topics. (Rebalances themselves: rebalance_kafka_spec.lua.)
local fstream = require "fstream"

local n = 0
local function id(name)
  n = n + 1
  return string.format("%s-%d", name, n)
end

-- What the worker would give its group consumer (App:_assignor, with the
-- environment variable unset unless given).
local function assignor(app, env)
  local getenv = os.getenv
  os.getenv = function(k)
    if k == "FSTREAM_PARTITION_ASSIGNOR" then return env end
    return getenv(k)
  end
  local ok, v = pcall(app._assignor, app, true)
  os.getenv = getenv
  if not ok then error(v, 0) end
  return v
end

describe("partition_assignor", function()
  it("refuses an unknown assignor, and a mix of the cooperative and eager ones, naming the accepted ones", function()
    for _, bad in ipairs { "sticky", "cooperative-sticky,range", 3 } do
      local ok, err = pcall(fstream.app, id("pa-bad"), { partition_assignor = bad })
      assert.is_false(ok)
      assert.matches([[partition_assignor must be "auto", "cooperative%-sticky", "range"]], err)
    end
    local app = fstream.app(id("pa-env"), {})
    local ok, err = pcall(assignor, app, "bogus")
    assert.is_false(ok)
    assert.matches("FSTREAM_PARTITION_ASSIGNOR: partition_assignor must be", err)
  end)

  it("auto is cooperative-sticky for a stateless app and range for partitioned tables, even written from one topic", function()
    local app = fstream.app(id("pa-relay"), {})
    app:agent("relay", app:topic("in"), function(stream) for _ in stream do end end)
    assert.are.equal("cooperative-sticky", assignor(app))

    local wc = fstream.app(id("pa-wc"), {})
    local counts = wc:table("counts", { default = 0 })
    wc:agent("count", wc:topic("words"), function(stream) for w in stream do counts[w] = counts[w] + 1 end end)
    -- a second agent on the same topic, and one that writes no table's topic, change nothing
    wc:agent("other", wc:topic("words"), function(stream) for _ in stream do end end)
    -- (a group_by inside the agent would add a second one once it runs)
    assert.are.equal("range", assignor(wc))
  end)

  it("auto is range when two topics write the app's partitioned tables (they must be co-partitioned)", function()
    local app = fstream.app(id("pa-join"), {})
    local customers = app:table("customers")
    app:agent("load", app:topic("customers"), function(stream) for k, v in stream:items() do customers[k] = v end end)
    app:agent("enrich", app:topic("orders"), function(stream) for _ in stream:join(customers) do end end)
    assert.are.equal("range", assignor(app))
    -- ...unless the table is global: nothing to co-partition.
    local g = fstream.app(id("pa-global"), {})
    local gt = g:global_table("customers")
    g:agent("load", g:topic("customers"), function(stream) for k, v in stream:items() do gt[k] = v end end)
    g:agent("enrich", g:topic("orders"), function(stream) for _ in stream do end end)
    assert.are.equal("cooperative-sticky", assignor(g))
  end)

  it("an explicit choice wins over auto, and the environment over the app", function()
    local app = fstream.app(id("pa-explicit"), { partition_assignor = "range" })
    app:agent("relay", app:topic("in"), function(stream) for _ in stream do end end)
    assert.are.equal("range", assignor(app))
    assert.are.equal("cooperative-sticky", assignor(app, "cooperative-sticky"))
    assert.are.equal("roundrobin", assignor(app, "roundrobin"))
  end)

  it("says why it chose range at info level for a worker on a broker, at debug level under fstream.testing and memory://", function()
    local core = require "fstream.core"
    local log = core.log
    local lines = {}
    core.log = function(level, msg) lines[#lines + 1] = level .. " " .. tostring(msg) end
    local ok, err = pcall(function()
      local wc = fstream.app(id("pa-log"), {})
      local counts = wc:table("counts", { default = 0 })
      wc:agent("count", wc:topic("words"), function(stream) for w in stream do counts[w] = counts[w] + 1 end end)
      local t = fstream.testing(wc)
      t:close()
      assert.are.equal("range", wc:_assignor(false))
    end)
    core.log = log
    assert(ok, err)
    local said = {}
    for _, l in ipairs(lines) do
      local level = l:match("^(%a+) partition assignor: range, not cooperative%-sticky")
      if level then said[#said + 1] = level end
    end
    -- fstream.testing's start: debug; the worker's (not quiet): info.
    assert.are.same({ "debug", "info" }, said)
  end)
end)
