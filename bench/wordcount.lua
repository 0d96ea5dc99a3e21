-- The "wordcount" benchmark app (scenarios wordcount, zipf, recovery, rss):
-- count words into a table, and send the running count of each word on.
--
-- The send is how bench-watch sees progress from outside the worker: the
-- table's own writes only reach Kafka (the changelog) and LMDB once per
-- checkpoint, far too coarse to time. It also keeps the shape of the other
-- two programs measured in the same run: bench-ceiling and the stateless app
-- both produce exactly one output per input, so the comparison prices the
-- table, not a difference in produce volume. The agent reads counts[w] twice,
-- as one would write it; the second read is served by the record cache.
--
-- Everything a run varies comes from the environment, because scripts/bench
-- uses fresh names per run: BENCH_APP (app id: consumer group, changelog
-- name), BENCH_IN, BENCH_OUT, BENCH_COMMIT_INTERVAL (seconds). The memory://
-- broker only makes the file runnable on its own; scripts/bench passes
-- --broker kafka://... and --store lmdb://... which override it.
-- BENCH_WC_SEND=0 leaves the send out: the word count as issue 14 measured it
-- (a table and its changelog, nothing produced per message), timed by the
-- group's committed offsets instead (bench/drain.sh, BENCH_CLOCK=committed).
-- BENCH_LUA_MEM=S logs the Lua heap (collectgarbage "count", garbage not yet
-- swept included) every S seconds: the rss scenario's way to tell the Lua
-- share of the worker's memory from the C side's without touching the runtime.
local fstream = require "fstream"

local app = fstream.app(os.getenv("BENCH_APP") or "bench-wordcount", {
  broker = "memory://",
  topic_partitions = 8,
  commit_interval = tonumber(os.getenv("BENCH_COMMIT_INTERVAL") or "2.8"),
})

local words = app:topic(os.getenv("BENCH_IN") or "bench-words", { value_serializer = "raw" })
local output = app:topic(os.getenv("BENCH_OUT") or "bench-word-counts")
local counts = app:table("word_counts", { default = 0 })

local send = os.getenv("BENCH_WC_SEND") ~= "0"
app:agent("count", words, function(stream)
  for _, w in stream:items() do
    counts[w] = counts[w] + 1
    if send then output:send { key = w, value = { word = w, count = counts[w] } } end
  end
end)

local mem_every = tonumber(os.getenv("BENCH_LUA_MEM") or "")
if mem_every then
  app:timer(mem_every, function()
    fstream.log.info("lua heap: %.1f MiB", collectgarbage("count") / 1024)
  end)
end
