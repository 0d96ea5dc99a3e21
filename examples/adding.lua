-- The seeds' `adding` agent: values are Add{a, b}; the agent yields a + b.
--   fstream-lua worker examples/adding.lua
-- Send your own while it runs (the worker prints the embedded broker's address):
--   fstream-lua send examples/adding.lua adding --broker kafka://127.0.0.1:PORT '{"a": 2, "b": 3}'
local fstream = require "fstream"

local app = fstream.app("agent-example", { broker = "memory://", topic_partitions = 4 })

-- Faust's `class Add(faust.Record): a: int; b: int` — until records land, a
-- value_type with a `from` function validates and converts.
local Add = {
  from = function(v)
    if type(v) ~= "table" or math.type(v.a) ~= "integer" or math.type(v.b) ~= "integer" then
      error("Add needs integer fields a and b")
    end
    return v
  end,
}

local topic = app:topic("adding", { value_type = Add })

app:agent("adding", topic, function(stream)
  for value in stream do
    stream:yield(value.a + value.b)
  end
end, { sink = { function(sum) print("AGENT YIELD: " .. sum) end } })

app:timer(1.0, function()
  local a, b = math.random(1, 100), math.random(1, 100)
  print(string.format("sending Add(a=%d, b=%d)", a, b))
  topic:send { key = "k", value = { a = a, b = b } }
end)
