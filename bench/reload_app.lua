-- The "reload" benchmark app (bench/reload.sh): one agent that stamps every
-- event with the version of the script that processed it and when.
--
-- The input is a numbered stream: key "k<n mod 100>", value "<n>", or "<n>"
-- followed by a space and padding (bench/reload.sh pads every message to 100
-- bytes: kcat passed short lines on in bursts of about 1 KB). For each
-- event the agent counts the key in a table (so a reload has table state to
-- checkpoint and hand over) and sends "<VERSION> <n> <ms>" to the output,
-- where ms is the wall-clock time of the processing in milliseconds. From the
-- outputs alone bench/reload.sh then tells, for each reload, the last event
-- the old version processed and the first one the new version did, and
-- whether any input number never came out.
--
-- bench/reload.sh rewrites the VERSION line below (and nothing else) to
-- trigger each reload: keep it on a line of its own, in exactly this form.
--
-- Everything a run varies comes from the environment: BENCH_APP (app id:
-- consumer group, changelog name), BENCH_IN, BENCH_OUT,
-- BENCH_PARTITIONS, BENCH_COMMIT_INTERVAL (seconds). The memory:// broker
-- only makes the file runnable on its own; bench/reload.sh passes
-- --broker kafka://... (a standalone `fstream-lua broker`, or Kafka).
local VERSION = 1

local fstream = require "fstream"

local app = fstream.app(os.getenv("BENCH_APP") or "bench-reload", {
  broker = "memory://",
  topic_partitions = tonumber(os.getenv("BENCH_PARTITIONS") or "4"),
  commit_interval = tonumber(os.getenv("BENCH_COMMIT_INTERVAL") or "2.8"),
})

local input = app:topic(os.getenv("BENCH_IN") or "bench-reload-in", { value_serializer = "raw" })
local output = app:topic(os.getenv("BENCH_OUT") or "bench-reload-out", { value_serializer = "raw" })
local counts = app:table("key_counts", { default = 0 })

app:agent("stamp", input, function(stream)
  for key, value in stream:items() do
    counts[key] = counts[key] + 1
    local n = value:match("^%d+")
    output:send { key = key, value = string.format("%d %s %.0f", VERSION, n, app.rt:now() * 1000) }
  end
end)
