-- A worker on its own embedded broker (memory://) is the only member of its
-- consumer group: it assigns itself every partition instead of joining (the
-- embedded coordinator holds a first JoinGroup for 3 s), and everything that
-- rides on the assignment still works: offsets committed to the embedded
-- coordinator and resumed from it, tables, leadership, resubscription.
local proc = require "spec.support.proc"
local Orders = require "spec.support.orders"
local bin, fixtures = proc.bin, proc.root .. "/spec/fixtures"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local json = require("fstream.core").json

local orders, sum = Orders.lines, Orders.sum

describe("a worker on its own embedded broker (memory://)", function()
  it("assigns itself every partition without a JoinGroup, and its offset commits are accepted", function()
    -- FSTREAM_KAFKA_DEBUG=cgrp logs every group request librdkafka makes.
    local cmd = string.format("env FSTREAM_KAFKA_DEBUG=cgrp APP_ID=solo-%s IN=solo-in OUT=solo-out %s worker %s/relay.lua -l debug",
      uniq, bin, fixtures)
    local w = proc.spawn(cmd, "worker-solo")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    assert.truthy(w:wait_for("assigned 4 partitions", 30), w:output())
    proc.produce_lines(addr, "solo-in", proc.numbers(1, 100))
    assert.are.equal(100, #proc.wait_count(addr, "solo-out", 100, 30))
    assert.truthy(w:wait_for("committing %d+ partition offsets", 10), w:output())
    proc.sleep(0.6) -- one more commit interval: a refused commit would be logged by now
    assert.are.equal(0, w:stop())
    local log = w:output()
    assert.matches("memory://: sole member of group solo%-[%d%-]+, assigning itself 4 partitions %(no JoinGroup%)", log)
    assert.matches("final checkpoint done: offsets committed", log)
    assert.not_matches("JOINGROUP", log) -- librdkafka's tag for its join requests and responses
    assert.not_matches("JoinGroup response", log)
    assert.not_matches("SyncGroup", log)
    assert.not_matches("commit[^\n]* failed", log)
  end)

  it("names every partition it assigns and revokes, however many (the list grows, nothing cut)", function()
    local input = "many-partitions-in-" .. uniq
    local w = proc.spawn(string.format("env APP_ID=many-%s IN=%s OUT=many-out-%s PARTITIONS=150 %s worker %s/relay.lua",
      uniq, input, uniq, bin, fixtures), "worker-many")
    assert.truthy(w:wait_for("assigned 150 partitions", 30), w:output())
    assert.are.equal(0, w:stop())
    local log = w:output()
    local assigned = log:match("assigned 150 partitions[^:\n]*: ([^\n]*)")
    local revoked = log:match("revoking 150 partitions: ([^\n]*)")
    assert.truthy(assigned and revoked, log)
    for _, names in ipairs { assigned, revoked } do
      local n = 0
      for _ in names:gmatch("%S+%[%d+%]") do n = n + 1 end
      assert.are.equal(150, n, names)
      assert.truthy(names:find(input .. "[149]", 1, true), names)
    end
  end)

  it("leads its group: an on_leader timer runs", function()
    local out = "ticks-" .. uniq
    local w = proc.spawn(string.format("env APP_ID=lead-%s OUT=%s %s worker %s/leader.lua", uniq, out, bin, fixtures),
      "worker-solo-leader")
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    local ticks = proc.wait_count(addr, out, 3, 30)
    assert.are.equal(0, w:stop())
    assert.is_true(#ticks >= 3, w:output())
    assert.is_number(json.decode(ticks[1]).pid)
  end)

  it("resubscribes to a topic an agent declares at run time: revokes, commits, reassigns, counts exactly", function()
    local name = "solo-gbl"
    local store = proc.tmp .. "/" .. name .. "-" .. uniq
    local cmd = string.format("env APP_ID=%s-%s IN=%s-in LATE=1 %s", name, uniq, name, bin)
    local w = proc.spawn(string.format("%s worker %s/groupby_agent.lua --store lmdb://%s -l info", cmd, fixtures, store),
      "worker-" .. name)
    local addr = w:wait_for("listening on ([%d%.]+:%d+)", 20)
    assert.truthy(addr, w:output())
    local function dump() return (Orders.totals(cmd, fixtures .. "/groupby_agent.lua", store)) end
    local function wait_sum(n) Orders.wait_sum(dump, n, w) end
    local expect = {}
    -- Orders before the agent regroups and after. Cooperative (the default):
    -- the repartition topic's partitions are added, the others keep going;
    -- eager (FSTREAM_PARTITION_ASSIGNOR=range): they are processed,
    -- committed, revoked and reassigned with the repartition topic.
    proc.produce_lines(addr, name .. "-in", orders(1, 1000, expect), { key_delim = "\t" })
    assert.truthy(w:wait_for("subscription changed: 2 topics", 30), w:output())
    local deadline, moved = os.time() + 30, false
    repeat
      local o = w:output()
      moved = o:match("assigned 8 partitions") or o:match("assigned 4 partitions %(incremental%)")
      if not moved then proc.sleep(0.1) end
    until moved or os.time() > deadline
    assert.truthy(moved, w:output())
    proc.produce_lines(addr, name .. "-in", orders(1001, 2000, expect), { key_delim = "\t" })
    wait_sum(sum(expect))
    proc.sleep(1) -- a rewound partition would show duplicates now
    assert.are.equal(0, w:stop(), w:output())
    assert.are.same(expect, dump())
    local log = w:output()
    if log:match("assigned 4 partitions %(incremental%)") then
      assert.not_matches("revoking", log:match("subscription changed.-stopping %(SIG") or "")
      assert.matches("assigning itself 4 partitions", log)
    else
      assert.matches("revoking 4 partitions", log)
      assert.matches("assigning itself 8 partitions", log)
    end
    assert.not_matches("commit[^\n]* failed", log)
  end)

  it("starts a table afresh when its local state is from an earlier run (the embedded broker kept nothing)", function()
    -- The seeds' word count on memory:// with a store that outlives the process:
    -- the second run's broker has empty changelogs, so the first run's LMDB
    -- state cannot be checked against them; it is discarded, not a fatal error.
    local store = proc.tmp .. "/memory-rerun-" .. uniq
    local cmd = string.format("%s worker %s/examples/wordcount.lua --store lmdb://%s -l info", bin, proc.root, store)
    local first = proc.spawn(cmd, "worker-rerun-1")
    assert.truthy(first:wait_for("assigned 8 partitions", 20), first:output())
    proc.sleep(2.5) -- the example's timer sends a sentence a second: the table gets entries
    assert.are.equal(0, first:stop())
    assert.matches("tables: %d+ changelog records", first:output())
    local second = proc.spawn(cmd, "worker-rerun-2")
    assert.truthy(second:wait_for("discarding it %(the table starts empty, as its topics do%)", 20), second:output())
    assert.truthy(second:wait_for("worker started", 10), second:output())
    proc.sleep(1.5)
    assert.is_true(second:alive(), second:output())
    assert.are.equal(0, second:stop())
    assert.not_matches("was the changelog deleted", second:output())
  end)
end)
