/* fs_lua_codec: payloads between Lua values and message bytes — the topic's
 * codec (raw, json, json:<big-integer mode>), the null sentinel for absent
 * payloads, and message headers. Shared by produce (fs_lua_topic.c) and the
 * streams' takes (fs_lua_stream.c). */
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "fs_json.h"
#include "fs_lua.h"

void *fs_lua_null; /* the JSON null sentinel's light userdata */

/* "raw", "json", or "json:<big>" with <big> a big-integer mode of fs_json. */
int fs_lua_parse_codec(lua_State *L, int idx)
{
    const char *c = luaL_optstring(L, idx, "raw");
    int big;
    if (strcmp(c, "raw") == 0) return FS_CODEC_RAW;
    if (strcmp(c, "json") == 0) return FS_CODEC_JSON;
    if (strncmp(c, "json:", 5) == 0 && (big = fs_json_big_mode(c + 5)) >= 0)
        return FS_CODEC_JSON | big << 8;
    return luaL_error(L, "unknown codec '%s' (raw, json, json:string or json:error)", c);
}

/* Pushes the decoded payload; absent payloads (tombstones) become the null
 * sentinel so that `for v in stream` never ends on one. */
int fs_lua_push_payload(lua_State *L, int codec, const void *p, size_t n, char *err, size_t errlen)
{
    if (!p) {
        lua_pushlightuserdata(L, fs_lua_null);
        return 0;
    }
    if (FS_CODEC_KIND(codec) == FS_CODEC_JSON)
        return fs_json_decode_big(L, p, n, FS_CODEC_BIG(codec), err, errlen);
    lua_pushlstring(L, p, n);
    return 0;
}

/* Encodes the value at idx into b; *absent is set for nil (a null payload). */
int fs_lua_encode_payload(lua_State *L, int idx, int codec, fs_buf *b, int *absent, char *err,
                          size_t errlen)
{
    fs_buf_reset(b);
    *absent = 0;
    int t = lua_type(L, idx);
    if (t == LUA_TNONE || t == LUA_TNIL ||
        (t == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == fs_lua_null &&
         FS_CODEC_KIND(codec) == FS_CODEC_RAW)) {
        *absent = 1;
        return 0;
    }
    if (FS_CODEC_KIND(codec) == FS_CODEC_JSON) return fs_json_encode(L, idx, b, err, errlen);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n); /* numbers: converted copy */
        if (fs_buf_add(b, s, n)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "the raw serializer needs a string, got a %s", lua_typename(L, t));
    return -1;
}

rd_kafka_headers_t *fs_lua_check_headers(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return NULL;
    luaL_checktype(L, idx, LUA_TTABLE);
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
            rd_kafka_headers_destroy(h);
            luaL_error(L, "headers must map strings to strings");
        }
        size_t vl;
        const char *v = lua_tolstring(L, -1, &vl);
        rd_kafka_header_add(h, lua_tostring(L, -2), -1, v, (ssize_t)vl);
        lua_pop(L, 1);
    }
    return h;
}
