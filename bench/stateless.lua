-- The "stateless" benchmark app: decode a JSON order, derive one field,
-- re-key it and encode it again. It touches every record once and keeps no
-- state, so its cost is the runtime's per-message path (consume, decode, Lua
-- call, encode, produce) and nothing else; scripts/bench compares it with
-- bench-ceiling, which moves the same records without decoding them.
--
-- Topic names come from the environment because scripts/bench uses fresh
-- topics per run (a rerun must not resume from an earlier run's offsets).
-- The memory:// broker only makes the file runnable on its own;
-- scripts/bench passes --broker kafka://... which overrides it.
local fstream = require "fstream"

-- BENCH_APP: a fresh consumer group per run when one input is drained again (bench/drain.sh);
-- BENCH_COMMIT_INTERVAL (seconds): the checkpoint interval (default: the runtime's).
local app = fstream.app(os.getenv("BENCH_APP") or "bench-stateless", {
  broker = "memory://",
  topic_partitions = 8,
  commit_interval = tonumber(os.getenv("BENCH_COMMIT_INTERVAL") or ""),
})

local input = app:topic(os.getenv("BENCH_IN") or "bench-in")
local output = app:topic(os.getenv("BENCH_OUT") or "bench-out")

app:agent("transform", input, function(stream)
  for order in stream do
    output:send{
      key = order.account_id,
      value = { id = order.id, account_id = order.account_id, total = order.amount * order.price },
    }
  end
end)
