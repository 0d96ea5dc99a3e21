-- bench/rebalance.sh's app: every event of IN goes to OUT's partition of the
-- same number as "<partition> <offset>" (OUT has LogAppendTime, so each
-- output's timestamp is when it was processed), and a table counts the
-- events per key, so that rebalances move table partitions too.
local fstream = require "fstream"

local app = fstream.app(os.getenv("APP_ID") or "rebalance", {
  broker = "memory://", topic_partitions = tonumber(os.getenv("PARTITIONS") or "12"),
  commit_interval = tonumber(os.getenv("COMMIT_INTERVAL") or "") or nil,
})
local input = app:topic(os.getenv("IN") or "rb-in", { value_serializer = "raw" })
local output = app:topic(os.getenv("OUT") or "rb-out", { value_serializer = "raw" })
local counts = app:table("counts", { default = 0 })

app:agent("relay", input, function(stream)
  for ev in stream:events() do
    output:send { partition = ev.partition, value = ev.partition .. " " .. ev.offset }
    local k = ev.key or "none"
    counts[k] = counts[k] + 1
  end
end)
