-- The exactly-once benchmark's app (bench/eos.sh): bench/stateless.lua's
-- transform or bench/wordcount.lua's count, with the guarantee and the
-- commit interval from the environment, so that the two guarantees run the
-- same code at the same interval.
--
-- BENCH_KIND: "stateless" (JSON order -> {id, account_id, total}) or
-- "wordcount" (words[w] += 1, the running count sent on); BENCH_APP, BENCH_IN,
-- BENCH_OUT: names; BENCH_GUARANTEE: processing_guarantee; BENCH_COMMIT_INTERVAL:
-- seconds (default 0.1).
local fstream = require "fstream"

local kind = os.getenv("BENCH_KIND") or "stateless"
local app = fstream.app(os.getenv("BENCH_APP") or "bench-eos", {
  broker = "memory://", topic_partitions = 4,
  commit_interval = tonumber(os.getenv("BENCH_COMMIT_INTERVAL") or "0.1"),
  processing_guarantee = os.getenv("BENCH_GUARANTEE"),
})
local output = app:topic(os.getenv("BENCH_OUT") or "bench-eos-out")

if kind == "stateless" then
  local input = app:topic(os.getenv("BENCH_IN") or "bench-eos-in")
  app:agent("transform", input, function(stream)
    for order in stream do
      output:send {
        key = order.account_id,
        value = { id = order.id, account_id = order.account_id, total = order.amount * order.price },
      }
    end
  end)
elseif kind == "wordcount" then
  local words = app:topic(os.getenv("BENCH_IN") or "bench-eos-words", { value_serializer = "raw" })
  local counts = app:table("word_counts", { default = 0 })
  app:agent("count", words, function(stream)
    for _, w in stream:items() do
      counts[w] = counts[w] + 1
      output:send { key = w, value = { word = w, count = counts[w] } }
    end
  end)
else
  error("BENCH_KIND must be stateless or wordcount, not " .. kind)
end
