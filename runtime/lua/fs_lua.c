/* fs_lua: what every Lua binding file (fs_lua_*.c) uses — finding the
 * runtime and a topic from a method's arguments. The bottom of the bindings
 * layer: it calls nothing of the other binding files (fs_lua_module.c
 * assembles them into the module). */
#include <lauxlib.h>

#include "fs_lua.h"

fs_rt *fs_lua_check_rt(lua_State *L, int idx)
{
    rt_ud *u = luaL_testudata(L, idx, RT_MT);
    if (!u) u = luaL_testudata(L, idx, RT_TEST_MT);
    if (!u) luaL_typeerror(L, idx, RT_MT);
    if (!u->rt) luaL_error(L, "runtime is closed");
    return u->rt;
}

fs_topic *fs_lua_check_topic(lua_State *L, fs_rt *rt, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    if (id < 1 || id > rt->ntopics) luaL_error(L, "unknown topic id %d", (int)id);
    return rt->topics[id - 1];
}

