-- The "forward" benchmark app: every record sent on unchanged, raw bytes in
-- and out (no JSON), keyed as it came. It does what bench-ceiling does, but
-- through the runtime: consume, the stream's iterator, an agent's Lua loop,
-- topic:send, produce, offsets. Beside the ceiling and bench/stateless.lua in
-- one run (bench/drain.sh with BENCH_SCRIPT=bench/forward.lua) it splits a
-- stateless job's cost into librdkafka's, the runtime's and the JSON's.
local fstream = require "fstream"

local app = fstream.app(os.getenv("BENCH_APP") or "bench-forward", {
  broker = "memory://",
  topic_partitions = 8,
  commit_interval = tonumber(os.getenv("BENCH_COMMIT_INTERVAL") or ""),
})

local input = app:topic(os.getenv("BENCH_IN") or "bench-in", { value_serializer = "raw" })
local output = app:topic(os.getenv("BENCH_OUT") or "bench-out", { value_serializer = "raw" })

app:agent("forward", input, function(stream)
  for key, value in stream:items() do
    output:send { key = key, value = value }
  end
end)
