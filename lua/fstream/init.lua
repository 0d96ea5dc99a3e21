-- fstream: the user-facing module. `local fstream = require "fstream"`.
local core = require "fstream.core"

local fstream = {
  version = "0.1.0",
  null = core.null, -- a JSON null / absent Kafka payload
  json = core.json,
  _apps = {},      -- every app created, in order (the CLI runs the last one)
  skip = setmetatable({}, { __tostring = function() return "fstream.skip" end }), -- a processor drops the event
}

-- fstream.app(id, opts): see lua/fstream/app.lua for the options.
function fstream.app(id, opts)
  local app = require("fstream.app").new(id, opts, 3)
  fstream._apps[#fstream._apps + 1] = app
  return app
end

-- fstream.record(name, fields): a validated record type (see lua/fstream/record.lua).
function fstream.record(name, fields)
  return require("fstream.record").define(name, fields, 2)
end

-- Suspends the calling agent, task or timer for `seconds`; others keep running.
function fstream.sleep(seconds)
  return core.sleep(seconds)
end

-- Non-blocking HTTP: fstream.http.request{method=, url=, headers=, body=, timeout=}
-- yields the calling coroutine until the response; returns {status=, headers=, body=}
-- or nil, error. Other agents keep running meanwhile.
fstream.http = { request = function(req) return core.http_request(req) end }

-- Faust's test_context: the app on an in-memory broker with a fake clock
-- (starting now, or at opts.clock seconds since the epoch).
function fstream.testing(app, opts)
  return require("fstream.testing").new(app, opts)
end

-- Logging from app code, through the worker's logger (-l LEVEL applies).
fstream.log = {}
for _, level in ipairs { "debug", "info", "warn", "error" } do
  fstream.log[level] = function(fmt, ...)
    if core.log_enabled(level) then
      core.log(level, select("#", ...) > 0 and string.format(fmt, ...) or tostring(fmt))
    end
  end
end

return fstream
