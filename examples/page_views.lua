-- The seeds' page views: a tumbling 10 s window over the events' own
-- `timestamp` field; a timer sends 20 random page-view events every 3 s. When
-- a window closes it counts the events per user and sends one UserStats
-- record per user to a sink topic.
--   fstream-lua worker examples/page_views.lua
local fstream = require "fstream"

local app = fstream.app("event-stream", {
  broker = "memory://", topic_partitions = 1, table_cleanup_interval = 1.0,
})

local events = app:topic("events")
local sink = app:topic("user-stats")

-- All events of a window are kept in one list under the key "events", as in the seed.
local tumbling = app:table("tumbling-events", {
  default = function() return {} end,
  on_window_close = function(key, window, list)
    local per_user, order = {}, {}
    for _, event in ipairs(list) do
      if not per_user[event.user_id] then order[#order + 1] = event.user_id end
      per_user[event.user_id] = (per_user[event.user_id] or 0) + 1
    end
    table.sort(order)
    print(string.format("window %s..%s: %d events", os.date("!%H:%M:%S", math.floor(window.start)),
      os.date("!%H:%M:%S", math.floor(window["end"])), #list))
    for _, user in ipairs(order) do
      local stats = { timestamp = window.start, user_id = user, count = per_user[user] }
      print(string.format("  UserStats(user_id=%s, count=%d)", user, stats.count))
      sink:send { key = user, value = stats }
    end
  end,
}):tumbling(10, { expires = 10 }):relative_to_field("timestamp")

app:agent("calculate_tumbling_events", events, function(stream)
  for event in stream do
    tumbling:update("events", function(list)
      list[#list + 1] = event
      return list
    end)
  end
end)

local users = { "User1", "User2", "User3", "User4", "User5" }
app:timer(3.0, function()
  local now = app.rt:now()
  for _ = 1, 20 do
    local user = users[math.random(#users)]
    events:send { key = "events", value = {
      event_type = math.random() < 0.5 and "page_view" or "scroll",
      user_id = user,
      action = math.random() < 0.5 and "action_1" or "action_2",
      -- The seed's format: "%Y-%m-%d %H:%M:%S.%f"
      timestamp = os.date("!%Y-%m-%d %H:%M:%S", math.floor(now)) .. string.format(".%06d", math.floor((now % 1) * 1e6)),
    } }
  end
end)
