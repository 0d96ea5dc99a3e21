/* fs_lua_module: the runtime's Lua face, module "fstream.core". App layer:
 * it assembles the bindings of the Lua layer and those of the app layer
 * (hot reload's methods, the HTTP client), so that no binding file calls up.
 *
 * Mechanisms only: register topics and agents, spawn coroutines, take a batch
 * of events, produce, run the loop. The policy (the stream DSL, error
 * handling, sinks) lives in lua/fstream/. A stream's take crosses into C once
 * per batch and fills a Lua table in place; moving to the next event is one
 * small C call (fs_lua_stream.c).
 *
 * The bindings are split by job, each file exporting its luaL_Reg arrays:
 *   fs_lua_runtime.c  the runtime object: create/adopt, lifecycle, agents,
 *                     coroutines, stats, reload set-up
 *   fs_lua_topic.c    topics and produce
 *   fs_lua_table.c    tables and their stores
 *   fs_lua_stream.c   streams ("fstream.Stream")
 *   fs_lua_codec.c    payload codecs and headers
 *   fs_lua_misc.c     logging and the rest of fstream.core's functions
 *   fs_lua_reload.c   (app) the reload methods of the runtime
 *   fs_http.c         (app) core.http_request
 *   fs_web.c          (app) the web server's methods of the runtime
 * fs_lua.c holds what they share (finding the runtime and topics). This
 * file assembles them: the runtime's metatable ("fstream.Runtime"), the
 * test runtime's ("fstream.TestRuntime": the same methods plus those only
 * fstream.testing may use), and the module table. */
#include <lauxlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_http.h"
#include "fs_json.h"
#include "fs_lua.h"
#include "fs_reload.h"
#include "fs_web.h"

/* A runtime metatable named `name` whose methods are every array of regs
 * (NULL-terminated list). The test one (a worker run with test hooks, or
 * fstream.testing) has every method of the other one plus the test's. */
static void new_rt_metatable(lua_State *L, const char *name, const luaL_Reg *const *regs)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    for (; *regs; regs++) luaL_setfuncs(L, *regs, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, fs_lua_rt_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, fs_lua_rt_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
}

int luaopen_fstream_core(lua_State *L)
{
    /* User coroutines copy the main thread's extra space: make it "no scheduler
     * coroutine" so host functions can tell them apart from ours. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    memset(lua_getextraspace(lua_tothread(L, -1)), 0, LUA_EXTRASPACE);
    lua_pop(L, 1);
    fs_sched_track_coroutines(L);

    const luaL_Reg *const methods[] = {fs_lua_runtime_methods, fs_lua_topic_methods,
                                       fs_lua_table_methods, fs_lua_reload_methods, fs_lua_web_methods,
                                       fs_lua_ask_methods, NULL};
    const luaL_Reg *const test_methods[] = {fs_lua_runtime_methods, fs_lua_topic_methods,
                                            fs_lua_table_methods, fs_lua_reload_methods,
                                            fs_lua_web_methods, fs_lua_runtime_test_methods,
                                            fs_lua_topic_test_methods, fs_lua_ask_methods,
                                            NULL};
    new_rt_metatable(L, RT_MT, methods);
    new_rt_metatable(L, RT_TEST_MT, test_methods);
    fs_lua_open_stream(L);

    lua_newtable(L);
    fs_lua_open_windows(L); /* core.windows: fs_lua_windows.c */
    luaL_setfuncs(L, fs_lua_runtime_funcs, 0);
    luaL_setfuncs(L, fs_lua_topic_funcs, 0);
    luaL_setfuncs(L, fs_lua_table_funcs, 0);
    luaL_setfuncs(L, fs_lua_misc_funcs, 0);
    luaL_setfuncs(L, fs_lua_ask_funcs, 0);
    luaL_setfuncs(L, fs_lua_http_funcs, 0);
    luaopen_fstream_json(L);
    lua_getfield(L, -1, "null");
    fs_lua_null = lua_touserdata(L, -1);
    lua_setfield(L, -3, "null");
    lua_setfield(L, -2, "json");
    lua_pushinteger(L, (lua_Integer)getpid());
    lua_setfield(L, -2, "pid");
    lua_pushstring(L, rd_kafka_version_str());
    lua_setfield(L, -2, "librdkafka_version");
    return 1;
}
