-- bench/web.sh's worker: AGENTS agents (default 1) each reading the input
-- topic and counting per key in a Lua table (the event path, no tables), with
-- the web server on WEB_PORT.
local fstream = require "fstream"
local app = fstream.app(os.getenv("APP_ID") or "webbench", {
  broker = "memory://", commit_interval = 1.0,
  topic_partitions = tonumber(os.getenv("PARTITIONS") or "8"),
  web = { port = tonumber(os.getenv("WEB_PORT") or "0") },
})
local input = app:topic(os.getenv("IN") or "webbench-in", { value_serializer = "raw" })
for i = 1, tonumber(os.getenv("AGENTS") or "1") do
  local seen = {}
  app:agent("count" .. i, input, function(stream)
    for key in stream:items() do seen[key] = (seen[key] or 0) + 1 end
  end)
end
