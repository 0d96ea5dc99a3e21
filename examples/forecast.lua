-- The seeds' forecast: every second, a forecast from the previous 10 seconds
-- of samples. Windows of 10 s hop every 1 s; each holds the list of its
-- samples (update reaches every window that contains a sample, the part that
-- Faust leaves to the user). When a window closes, a least-squares line
-- through its samples predicts the value one second after the window's end.
--   fstream-lua worker examples/forecast.lua
local fstream = require "fstream"

local app = fstream.app("forecast", {
  broker = "memory://", topic_partitions = 1, table_cleanup_interval = 0.5,
})

local samples = app:topic("samples")
local forecasts = app:topic("forecasts")

-- Least squares over (t, v): v = a + b * t; returns the prediction at `at`.
-- Times are taken relative to the first sample: with epoch seconds the sums of
-- squares would cancel out in double precision.
local function trend(points, at)
  local n, st, sv, stt, stv = #points, 0, 0, 0, 0
  local t0 = points[1].t
  at = at - t0
  for _, p in ipairs(points) do
    local x = p.t - t0
    st, sv, stt, stv = st + x, sv + p.v, stt + x * x, stv + x * p.v
  end
  local den = n * stt - st * st
  if n < 2 or den == 0 then return sv / n end
  local b = (n * stv - st * sv) / den
  local a = (sv - b * st) / n
  return a + b * at
end

local windows = app:table("sample-windows", {
  default = function() return {} end,
  on_window_close = function(sensor, window, points)
    if #points == 0 then return end
    local at = window["end"] + 1
    local predicted = trend(points, at)
    print(string.format("%s: %d samples in [%.0f, %.0f) -> forecast %.2f at %.0f", sensor, #points,
      window.start, window["end"], predicted, at))
    forecasts:send { key = sensor, value = {
      sensor = sensor, window_start = window.start, window_end = window["end"],
      samples = #points, at = at, forecast = predicted,
    } }
  end,
}):hopping(10, 1, { expires = 0 }):relative_to_field("t")

app:agent("collect", samples, function(stream)
  for s in stream do
    windows:update(s.sensor, function(points)
      points[#points + 1] = { t = s.t, v = s.v }
      return points
    end)
  end
end)

-- A sensor whose reading rises 2 units a second, with noise: 4 samples a second.
local t0
app:timer(0.25, function()
  local now = app.rt:now()
  t0 = t0 or now
  samples:send { key = "sensor-1", value = {
    sensor = "sensor-1", t = now, v = 20 + 2 * (now - t0) + (math.random() - 0.5),
  } }
end)
