-- Start-up benchmark (bench/startup.sh): a task sends one event as soon as the
-- worker starts; the agent prints "processed" when it gets it. The time from
-- process start to that line is the start-up time.
local fstream = require "fstream"

local app = fstream.app("startup-bench", { broker = "memory://", topic_partitions = 4 })
local input = app:topic("startup-input", { value_serializer = "raw" })

app:agent("first", input, function(stream)
  for v in stream do
    print("processed " .. v)
    io.stdout:flush()
  end
end)

app:task(function()
  input:send{ key = "k", value = "first" }
end)
