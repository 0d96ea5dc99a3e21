-- capture(fn): runs fn and returns what the runtime logged meanwhile (the C
-- logger writes to fd 2, so print-level redirection would miss it). An error
-- of fn is raised again once the log has been read and the file removed.
local core = require "fstream.core"

return function(fn)
  local path = os.tmpname()
  core.redirect_stderr(path)
  local ok, err = pcall(fn)
  core.redirect_stderr(nil)
  local f = assert(io.open(path))
  local log = f:read("a")
  f:close()
  os.remove(path)
  if not ok then error(err, 0) end
  return log
end
