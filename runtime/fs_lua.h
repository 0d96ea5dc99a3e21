/* fs_lua: what the Lua binding files (fs_lua.c: runtime and module;
 * fs_lua_stream.c: streams) share. Internal to the runtime. */
#ifndef FS_LUA_H
#define FS_LUA_H

#include <lua.h>

#include "fs_rt.h"

#define RT_MT "fstream.Runtime"
#define STREAM_MT "fstream.Stream"

enum { MODE_VALUE = 0, MODE_ITEMS = 1, MODE_EVENTS = 2 };

typedef struct {
    fs_rt *rt;
} rt_ud;

typedef struct {
    fs_stream *s;
    fs_rt *rt;
} stream_ud;

extern void *fs_lua_null; /* the JSON null sentinel's light userdata */

fs_rt *fs_lua_check_rt(lua_State *L, int idx);
fs_topic *fs_lua_check_topic(lua_State *L, fs_rt *rt, int idx);
/* Pushes a decoded payload; an absent one (tombstone) is the null sentinel. */
int fs_lua_push_payload(lua_State *L, int codec, const void *p, size_t n, char *err, size_t errlen);
/* Pushes an event's metadata table (with raw bytes when err_only). */
void fs_lua_push_event(lua_State *L, fs_event *e, int err_only);
void fs_lua_open_stream(lua_State *L);
void fs_lua_open_windows(lua_State *L); /* core.windows into the module table on top */

#endif
