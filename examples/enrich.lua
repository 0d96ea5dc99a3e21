-- The seeds' processors: add_default_language fills in a field, and
-- add_client_info awaits an HTTP call to a client service — without blocking
-- the worker: other agents (here, a heartbeat) keep running during the call.
-- Start the local service first, then the worker:
--   python3 spec/support/slow_http.py 8089 &
--   fstream-lua worker examples/enrich.lua
local fstream = require "fstream"

local app = fstream.app("enrich", { broker = "memory://", topic_partitions = 1 })
local service = os.getenv("CLIENT_SERVICE") or "http://127.0.0.1:8089"

local events = app:topic("account-events")

local function add_default_language(value)
  if not value.language then value.language = "US" end
  return value
end

local function add_client_info(value)
  local res, err = fstream.http.request {
    url = string.format("%s/client/%s?delay=0.5", service, value.account_id), timeout = 5,
  }
  if not res then
    value.client = { error = err }
  elseif res.status ~= 200 then
    value.client = { error = "HTTP " .. res.status }
  else
    value.client = fstream.json.decode(res.body)
  end
  return value
end

local enriched = app:stream(events, { processors = { add_default_language, add_client_info } })

app:agent("report", enriched, function(stream)
  for v in stream do
    print(string.format("account %s (%s): client %s", v.account_id, v.language,
      v.client.name or ("unavailable: " .. tostring(v.client.error))))
  end
end)

local beats = 0
app:timer(0.1, function() beats = beats + 1 end)
app:timer(2.0, function() print(string.format("heartbeat: %d beats while waiting on HTTP", beats)) end)

local n = 0
app:timer(1.0, function()
  n = n + 1
  events:send { key = "a" .. n, value = { account_id = tostring(n), language = n % 2 == 0 and "SE" or nil } }
end)
