-- The seeds' word count: a table counts words from a topic; a timer feeds it
-- sentences, so the counts visibly grow while the worker runs.
--   fstream-lua worker examples/wordcount.lua
--   fstream-lua table examples/wordcount.lua word_counts        (after stopping it)
local fstream = require "fstream"

local app = fstream.app("wordcount", { broker = "memory://", topic_partitions = 4 })

local sentences = app:topic("sentences", { value_serializer = "raw" })
local words = app:topic("words", { key_type = "string", value_type = "string", value_serializer = "raw" })
local counts = app:table("word_counts", { default = 0 })

-- Split sentences into words, keyed by the word so that each word's count
-- lives in exactly one partition (co-partitioning).
app:agent("split", sentences, function(stream)
  for sentence in stream do
    for word in sentence:lower():gmatch("%a+") do
      words:send { key = word, value = word }
    end
  end
end)

app:agent("count", words, function(stream)
  for word in stream do
    counts[word] = counts[word] + 1
  end
end)

local lines = {
  "the quick brown fox jumps over the lazy dog",
  "a stream is an unbounded sequence of events",
  "the table keeps the state of the stream",
}
app:timer(1.0, function()
  sentences:send { value = lines[math.random(#lines)] }
end)

-- Every 5 seconds, print the top words this worker holds.
app:timer(5.0, function()
  local top = {}
  for word, n in counts:items() do top[#top + 1] = { word, n } end
  table.sort(top, function(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]) end)
  local parts = {}
  for i = 1, math.min(5, #top) do parts[i] = top[i][1] .. "=" .. top[i][2] end
  print("top words: " .. table.concat(parts, " "))
end)
