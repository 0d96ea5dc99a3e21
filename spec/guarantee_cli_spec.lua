-- The command line's side of exactly-once: --guarantee, the refusal of the
-- embedded broker, the banner.
local proc = require "spec.support.proc"

local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local APP = fixtures .. "/eos_wordcount.lua"

describe("fstream-lua worker --guarantee", function()
  it("is a usage error for anything but at_least_once and exactly_once (exit 2)", function()
    local out, rc = proc.run(string.format("%s worker %s --guarantee exactly-once", bin, APP))
    assert.are.equal(2, rc, out)
    assert.matches("%-%-guarantee must be at_least_once or exactly_once, got 'exactly%-once'", out)
    assert.matches("usage: fstream%-lua worker", out)
  end)

  it("is listed in the worker's help", function()
    local out, rc = proc.run(string.format("%s worker --help", bin))
    assert.are.equal(0, rc, out)
    assert.matches("%-%-guarantee G%s+at_least_once or exactly_once", out)
  end)

  it("refuses exactly_once on the embedded broker at start: what, why, what instead (exit 1)", function()
    local store = proc.tmp .. "/eos-refuse-" .. uniq
    local out, rc = proc.run(string.format("env APP_ID=refuse-%s %s worker %s --broker memory:// --store lmdb://%s",
      uniq, bin, APP, store))
    assert.are.equal(1, rc, out)
    assert.matches("cannot start app 'refuse%-[%d%-]+': processing_guarantee exactly_once needs a Kafka cluster, and "
      .. "memory:// is the embedded broker", out)
    assert.matches("writes no commit markers", out)
    assert.matches("Use %-%-broker kafka://HOST:PORT", out)
    assert.matches("or %-%-guarantee at_least_once", out)
  end)

  it("refuses exactly_once on a standalone embedded broker reached as kafka:// (the transport's refusal, exit 1)", function()
    local broker, addr = proc.broker({}, 4)
    finally(function() broker:stop() end)
    local store = proc.tmp .. "/eos-mock-" .. uniq
    local out, rc = proc.run(string.format("env APP_ID=mock-%s IN=mock-in-%s OUT=mock-out-%s %s worker %s --broker kafka://%s --store lmdb://%s",
      uniq, uniq, uniq, bin, APP, addr, store))
    assert.are.equal(1, rc, out)
    assert.matches("cannot start app 'mock%-[%d%-]+': exactly%-once is not available on " .. addr:gsub("%.", "%%."), out)
    assert.matches("fstream%-lua broker", out)
    assert.matches("at_least_once", out)
  end)

  it("overrides the app's option: an exactly_once app runs at_least_once on memory://, with its default interval",
    function()
      local store = proc.tmp .. "/eos-over-" .. uniq
      local w = proc.spawn(string.format("env APP_ID=over-%s %s worker %s --broker memory:// --store lmdb://%s "
        .. "--guarantee at_least_once", uniq, bin, APP, store), "worker-over")
      assert.truthy(w:wait_for("worker started", 30), w:output())
      assert.are.equal(0, w:stop())
      assert.matches("guarantee  at_least_once, commit_interval 2.8 s", w:output())
    end)
end)
