-- Session windows: a user's clicks closer than 5 s apart are one session.
-- A timer plays a scripted half minute of clicks (one tick per second). Bo
-- clicks at 0 s and 9 s — two sessions — until his phone, offline for a
-- while, delivers a click made at 4.5 s: it is closer than 5 s to both, so
-- they merge into one session of 3 clicks. Nothing arrives after 22 s:
-- `idle_close` lets stream time follow the clock once the partition has been
-- quiet for 3 s, so Ana's last session closes without waiting for a click.
--   fstream-lua worker examples/sessions.lua
local fstream = require "fstream"

local app = fstream.app("click-sessions", {
  broker = "memory://", topic_partitions = 1, table_cleanup_interval = 1.0,
})

local clicks = app:topic("clicks")
local sessions_topic = app:topic("sessions")

local t0 -- the epoch time of the script's second 0

local sessions = app:table("sessions", {
  default = 0,
  on_window_close = function(user, window, n)
    -- window.start: the first click; window["end"]: the last click + the gap.
    print(string.format("session of %s: %d clicks, %+.1f s .. %+.1f s", user, n, window.start - t0,
      window["end"] - t0))
    sessions_topic:send { key = user, value = { user = user, start = window.start, ["end"] = window["end"], clicks = n } }
  end,
}):session(5, {
  expires = 5,                                    -- a session closes 5 s after its end (stream time)
  combine = function(a, b) return a + b end,      -- how two sessions' counts merge
  idle_close = 3,                                 -- a partition quiet for 3 s follows the clock
}):relative_to_field("ts")

app:agent("sessionize", clicks, function(stream)
  for click in stream do
    sessions:update(click.user, function(n) return n + 1 end)
  end
end)

-- second -> clicks sent then: { user, seconds after t0 the click was made }
local script = {
  [0] = { { "ana", 0 }, { "bo", 0 } },
  [1] = { { "ana", 1 } },
  [2] = { { "ana", 2 } },
  [3] = { { "ana", 3 } },
  [9] = { { "bo", 9 } },
  [10] = { { "bo", 4.5 } },                       -- late, but in time: bridges bo's two sessions
  [20] = { { "ana", 20 } },
  [22] = { { "ana", 22 } },
}

local tick = -1
app:timer(1.0, function()
  if not t0 then t0 = math.floor(app.rt:now()) end
  tick = tick + 1
  for _, c in ipairs(script[tick] or {}) do
    clicks:send { key = c[1], value = { user = c[1], ts = t0 + c[2] } }
  end
end)
