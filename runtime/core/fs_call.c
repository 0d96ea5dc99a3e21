/* fs_call: one protected-call function with one message handler, and the
 * counted registry references (see fs_call.h). */
#include <lauxlib.h>

#include "fs_call.h"

/* Only the thread that runs Lua takes and releases references. */
static long live_refs;

/* 1: converted by its __tostring; 0: a string already, or named by its type. */
static int to_message(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
        lua_tostring(L, idx);
        return 0;
    }
    if (luaL_callmeta(L, idx, "__tostring")) {
        if (lua_type(L, -1) == LUA_TSTRING) {
            lua_replace(L, idx);
            return 1;
        }
        lua_pop(L, 1);
    }
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
    lua_replace(L, idx);
    return 0;
}

const char *fs_call_message(lua_State *L, int idx)
{
    to_message(L, idx);
    return lua_tostring(L, idx);
}

/* An error object that describes itself (__tostring) is shown as it says,
 * without a traceback, as lua.c's msghandler does. */
int fs_call_msgh(lua_State *L)
{
    if (to_message(L, 1)) return 1;
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/* The same handler without the traceback: the error message alone. */
static int msgh_plain(lua_State *L)
{
    to_message(L, 1);
    lua_settop(L, 1);
    return 1;
}

int fs_call(lua_State *L, int nargs, int nresults, int flags)
{
    int base = lua_gettop(L) - nargs; /* the function's index */
    if (flags & FS_CALL_RAW) return lua_pcall(L, nargs, nresults, 0);
    lua_pushcfunction(L, flags & FS_CALL_TRACEBACK ? fs_call_msgh : msgh_plain);
    lua_insert(L, base);
    int st = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return st;
}

int fs_ref(lua_State *L)
{
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (ref != LUA_REFNIL && ref != LUA_NOREF) live_refs++;
    return ref;
}

void fs_unref(lua_State *L, int ref)
{
    if (ref == LUA_REFNIL || ref == LUA_NOREF || ref == 0) return;
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    live_refs--;
}

long fs_refs_live(void)
{
    return live_refs;
}
