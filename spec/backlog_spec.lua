-- A backlog many times the group consumer's prefetch (FS_FETCH_QUEUE_MSGS in
-- runtime/transport/fs_kafka.c): librdkafka's fetcher stops at that threshold
-- and the transport wakes it again, each time the worker has taken the queue
-- down, by seeking every partition to the worker's position. The seek must
-- neither skip nor repeat a message: one run, no rebalance, so every input is
-- relayed exactly once. The end-to-end version of the measurement in
-- BENCHMARKS.md ("Backlog drain"); its timing is not asserted here.
local proc = require "spec.support.proc"

local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))

describe("a backlog larger than the consumer's prefetch", function()
  local broker, addr
  setup(function() broker, addr = proc.broker({}, 4) end)
  teardown(function() broker:stop() end)

  it("wakes the fetcher each time the queue ran low, and relays every message exactly once", function()
    local n = 60000
    local env = { APP_ID = "backlog-" .. uniq, IN = "backlog-in-" .. uniq, OUT = "backlog-out-" .. uniq }
    proc.produce_lines(addr, env.IN, proc.numbers(1, n))
    proc.create_topics(addr, env.OUT, env.APP_ID .. "-adding")
    -- -l debug: the transport logs each wake-up of the fetcher.
    local vars = {}
    for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. proc.quote(v) end
    local w = proc.spawn(string.format("env %s FSTREAM_BROKER=kafka://%s %s worker %s -l debug --store %s",
      table.concat(vars, " "), addr, proc.bin, proc.quote(proc.root .. "/spec/fixtures/relay.lua"),
      proc.quote("lmdb://" .. proc.tmp .. "/" .. env.APP_ID .. "-data")), "worker-backlog")
    proc.wait_messages(addr, env.OUT, n, 120)
    proc.sleep(1) -- a worker that repeats messages would still be writing them
    local out = proc.consume_all(addr, env.OUT)
    assert.are.equal(0, w:stop())
    local log = w:output()
    local wakes = select(2, log:gsub("woke the consumer's fetcher", ""))
    -- At least once: 60,000 is three times the threshold, but a loaded
    -- machine's back-pressure pauses (which restart the fetcher themselves)
    -- can take the place of the other wakes.
    assert.is_true(wakes >= 1, "the fetcher was never woken:\n" .. log:sub(-3000))
    assert.are.equal(n, #out, "relayed " .. #out .. " of " .. n)
    local c = proc.counts(out, "out:")
    for i = 1, n do assert(c[i] == 1, "message " .. i .. " relayed " .. tostring(c[i]) .. " times") end
  end)
end)
