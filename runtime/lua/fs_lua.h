/* fs_lua: what the Lua binding files (fs_lua*.c, see fs_lua_module.c) share.
 * Internal to the runtime (layer 7: bindings). */
#ifndef FS_LUA_H
#define FS_LUA_H

#include <lauxlib.h>
#include <lua.h>

#include "fs_rt.h"

#define RT_MT "fstream.Runtime"
#define RT_TEST_MT "fstream.TestRuntime" /* fstream.testing's: RT_MT's methods + test-only ones */
#define STREAM_MT "fstream.Stream"

enum { MODE_VALUE = 0, MODE_ITEMS = 1, MODE_EVENTS = 2 };

/* The Lua object that owns a runtime in its state. rt: NULL once closed, or
 * once a reload handed the runtime to the next state's object. */
typedef struct {
    fs_rt *rt;
} rt_ud;

/* A Lua Stream's C side. Its uservalue 1 is the runtime's userdata, which
 * keeps `owner` alive; s and rt are valid while owner->rt is set. */
typedef struct {
    fs_stream *s;
    fs_rt *rt;
    rt_ud *owner;
} stream_ud;

extern void *fs_lua_null; /* the JSON null sentinel's light userdata */

/* fs_lua.c */
fs_rt *fs_lua_check_rt(lua_State *L, int idx); /* either runtime metatable; raises if closed */
fs_topic *fs_lua_check_topic(lua_State *L, fs_rt *rt, int idx);

/* fs_lua_codec.c */
/* "raw", "json", or "json:<big>" at idx (default raw) -> FS_CODEC_* value; raises. */
int fs_lua_parse_codec(lua_State *L, int idx);
/* Pushes a decoded payload; an absent one (tombstone) is the null sentinel. */
int fs_lua_push_payload(lua_State *L, int codec, const void *p, size_t n, char *err, size_t errlen);
/* Encodes the value at idx into b; *absent is set for nil (a null payload). */
int fs_lua_encode_payload(lua_State *L, int idx, int codec, fs_buf *b, int *absent, char *err,
                          size_t errlen);
/* The headers table at idx (nil: NULL), owned by the caller; raises before allocating. */
rd_kafka_headers_t *fs_lua_check_headers(lua_State *L, int idx);

/* fs_lua_stream.c */
/* Pushes an event's metadata table (with raw bytes when err_only). */
void fs_lua_push_event(lua_State *L, fs_event *e, int err_only);
void fs_lua_open_stream(lua_State *L);
/* The event the agent coroutine running L is at (its stream's cursor), or
 * NULL: not an agent's coroutine (a task, timer, page), or between events. */
fs_event *fs_lua_event_in_hand(lua_State *L);
/* The headers of an event, or NULL when it has none (parsed by librdkafka
 * on first use, then kept with the message). */
rd_kafka_headers_t *fs_lua_event_headers(fs_event *e);
void fs_lua_open_windows(lua_State *L); /* core.windows into the module table on top */

/* Each file's functions: runtime methods, test-runtime-only methods, module functions. */
extern const luaL_Reg fs_lua_runtime_methods[], fs_lua_runtime_test_methods[], fs_lua_runtime_funcs[];
extern const luaL_Reg fs_lua_topic_methods[], fs_lua_topic_test_methods[], fs_lua_topic_funcs[];
extern const luaL_Reg fs_lua_table_methods[], fs_lua_table_funcs[];
extern const luaL_Reg fs_lua_misc_funcs[];
/* fs_lua_ask.c: core.park, unpark, reply_to; rt:replies_open/take/wait (the
 * worker's reply reader, closed by fs_lua_replies_close when the runtime is freed). */
extern const luaL_Reg fs_lua_ask_funcs[], fs_lua_ask_methods[];
void fs_lua_replies_close(fs_rt *rt);
int fs_lua_rt_close(lua_State *L); /* the runtime objects' __gc and __close */

#endif
