-- Scenario 8, the soak: a worker under steady load for a long time, killed
-- with -9 and hot-reloaded over and over; RSS, open fds and registry refs must
-- stay flat and nothing may be lost. The code is chaos/soak.lua, which
-- scripts/soak runs with its own options (30 minutes by default); here the
-- full version is that 30-minute run and --quick a 3-minute one (a kill every
-- minute, a reload every 20 s). Too long for scripts/test.
local soak = require "chaos.soak"

return {
  name = "soak",
  title = "30 min at 5,000 msg/s, kill -9 every 3 min, hot reload every minute: RSS, fds, refs flat, nothing lost",
  order = 8,
  quick_in_suite = false,
  run = function(ctx)
    local p = {}
    for k, v in pairs(ctx.quick and soak.QUICK or soak.FULL) do p[k] = v end
    soak.run(ctx, p)
  end,
}
