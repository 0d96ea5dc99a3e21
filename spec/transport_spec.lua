-- The librdkafka transport under load it cannot take at once: a burst of sends
-- larger than librdkafka's own queue (queue.buffering.max.messages) waits in
-- the worker, in order, instead of the loop spinning on QUEUE_FULL.
local proc = require "spec.support.proc"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("the kafka transport", function()
  it("delivers a burst larger than the producer's queue, all of it, in order per partition", function()
    local inputs, burst = { "a", "b", "c", "d" }, 1500
    local cmd = string.format("env FSTREAM_KAFKA_PRODUCER=queue.buffering.max.messages=50 APP_ID=burst-%s "
      .. "IN=burst-in OUT=burst-out BURST=%d %s worker %s/burst.lua -l info", uniq, burst, bin, fixtures)
    local w = proc.spawn(cmd, "worker-burst")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("assigned 2 partitions", 30), w:output())
    proc.produce_lines(addr, "burst-in", inputs)
    local values = proc.wait_count(addr, "burst-out", #inputs * burst, 60)
    assert.are.equal(0, w:stop(), w:output())
    assert.are.equal(#inputs * burst, #values)
    -- kcat reads each partition in offset order; one input's outputs share a
    -- partition, so they must come back exactly 1..burst.
    local next_of = {}
    for _, v in ipairs(values) do
      local key, i = v:match("^(%a+):(%d+)$")
      assert.truthy(key, v)
      local want = (next_of[key] or 0) + 1
      assert.are.equal(want, tonumber(i), "out of order for " .. key)
      next_of[key] = want
    end
    for _, k in ipairs(inputs) do assert.are.equal(burst, next_of[k]) end
    local log = w:output()
    -- The overflow path ran (with the old spin there is no such line), and no
    -- delivery failed.
    local peak = tonumber(log:match("producer: up to (%d+) messages waited"))
    assert.truthy(peak and peak > 0, log)
    assert.matches("final checkpoint done: offsets committed", log)
    assert.not_matches("delivery to [^\n]* failed", log)
  end)
end)
