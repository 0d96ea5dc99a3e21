-- Loads the JSON codec: from the runtime's Lua module when the build has it, else from FSTREAM_JSON_SO.
local ok, core = pcall(require, "fstream.core")
if ok and type(core) == "table" and core.json then return core.json end
return assert(package.loadlib(assert(os.getenv("FSTREAM_JSON_SO"), "build the runtime first"), "luaopen_fstream_json"))()
