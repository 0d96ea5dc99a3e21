/* fs_lua_reload: the runtime methods of hot reload (rt:reload_setup,
 * rt:reload_watching, rt:watch, rt:rebound), put into the runtime metatable
 * by the module (fs_lua_module.c). App layer: they call fs_reload.c. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "fs_lua.h"
#include "fs_reload.h"

/* rt:reload_setup(path, --broker, --store, watch, broker_url, data_dir): a worker whose loop main.c
 * drives can reload (SIGHUP; with watch, when its files change). */
static int l_rt_reload_setup(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    if (fs_reload_setup(rt, luaL_checkstring(L, 2), luaL_checkstring(L, 3), luaL_checkstring(L, 4),
                        lua_toboolean(L, 5), luaL_checkstring(L, 6), luaL_checkstring(L, 7), err,
                        sizeof err))
        return luaL_error(L, "%s", err);
    return 0;
}

static int l_rt_reload_watching(lua_State *L)
{
    lua_pushboolean(L, fs_reload_watching(fs_lua_check_rt(L, 1)));
    return 1;
}

/* rt:watch({path, ...}): the files whose change reloads the app (--reload). */
static int l_rt_watch(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)luaL_len(L, 2);
    const char **files = calloc((size_t)n + 1, sizeof *files);
    if (!files) return luaL_error(L, "out of memory");
    for (int i = 0; i < n; i++) {
        lua_geti(L, 2, i + 1);
        files[i] = lua_tostring(L, -1); /* kept alive by the table */
        lua_pop(L, 1);
        if (!files[i]) n = i;
    }
    int rc = fs_reload_watch(rt, files, n);
    free(files);
    if (rc) return luaL_error(L, "cannot watch the app's files: %s", strerror(-rc));
    return 0;
}

/* rt:rebound(): the reloaded version declared everything; fetching restarts. */
static int l_rt_rebound(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    if (fs_reload_rebound(rt, err, sizeof err)) return luaL_error(L, "%s", err);
    return 0;
}

/* rt:reload_stats() -> {reloads=, failures=, pause_seconds_sum=, last_pause_seconds=,
 * history = {{time=, ok=, pause_seconds=, message=}, ... oldest first}}, or nil
 * when this worker cannot reload. */
static int l_rt_reload_stats(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    int64_t reloads, failures, sum, n;
    const struct fs_reload_event *hist = fs_reload_history(rt, &reloads, &failures, &sum, &n);
    if (!hist) return 0;
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, reloads);
    lua_setfield(L, -2, "reloads");
    lua_pushinteger(L, failures);
    lua_setfield(L, -2, "failures");
    lua_pushnumber(L, (double)sum / 1000.0);
    lua_setfield(L, -2, "pause_seconds_sum");
    lua_newtable(L);
    int64_t first = n > FS_RELOAD_HIST ? n - FS_RELOAD_HIST : 0;
    for (int64_t i = first; i < n; i++) {
        const struct fs_reload_event *e = &hist[i % FS_RELOAD_HIST];
        lua_createtable(L, 0, 4);
        lua_pushnumber(L, (double)e->at_ms / 1000.0);
        lua_setfield(L, -2, "time");
        lua_pushboolean(L, e->ok);
        lua_setfield(L, -2, "ok");
        lua_pushnumber(L, (double)e->pause_ms / 1000.0);
        lua_setfield(L, -2, "pause_seconds");
        lua_pushstring(L, e->msg);
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, (lua_Integer)(i - first + 1));
    }
    lua_setfield(L, -2, "history");
    return 1;
}

const luaL_Reg fs_lua_reload_methods[] = {
    {"reload_stats", l_rt_reload_stats},
    {"reload_setup", l_rt_reload_setup},
    {"reload_watching", l_rt_reload_watching},
    {"watch", l_rt_watch},
    {"rebound", l_rt_rebound},
    {NULL, NULL},
};
