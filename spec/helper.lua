-- Loaded by busted before every spec (see .busted): the specs run the Lua side
-- from lua/ and the runtime from the build's Lua C module, in-process.
local root = os.getenv("FSTREAM_ROOT") or "."
local build = os.getenv("FSTREAM_BUILD") or (root .. "/build")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/?.lua;" .. package.path
package.preload["fstream.core"] = function()
  local open = assert(package.loadlib(build .. "/fstream_core.so", "luaopen_fstream_core"))
  return open()
end
