-- The seeds' first agent: an anonymous agent that prints what it receives and
-- yields it on, plus the sink forms (a function, a topic, another agent).
--   fstream-lua worker examples/myagent.lua
local fstream = require "fstream"

local app = fstream.app("stream-example", { broker = "memory://", topic_partitions = 4 })

local agent_log = app:topic("agent_log")

local agent_b = app:agent("agent_b", nil, function(stream)
  for event in stream do
    print(string.format("AGENT B RECEIVED: %s", fstream.json.encode(event)))
  end
end)

local function mysink(value)
  print(string.format("AGENT YIELD: %s", fstream.json.encode(value)))
end

local myagent = app:agent("myagent", nil, function(stream)
  for value in stream do
    print(string.format("MYAGENT RECEIVED -- %s", fstream.json.encode(value)))
    stream:yield(value)
  end
end, { sink = { mysink, agent_log, agent_b } })

-- Something to look at: a message every second.
local n = 0
app:timer(1.0, function()
  n = n + 1
  myagent:send { key = "greeting", value = { n = n, text = "hello #" .. n } }
end)
