/* fs_lua_misc: module functions of fstream.core that are not about one
 * runtime — logging, the broker URL check, stderr redirection for specs,
 * index_op (how fstream.table tells a method call from a read), and the
 * regular expressions of pattern topics. */
#include <fcntl.h>
#include <lauxlib.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_broker.h"
#include "fs_lua.h"
#include "fs_trace.h"
#include "fs_worker.h"

/* core.redirect_stderr(path | nil): points fd 2 at a file, or back. For specs
 * that check what the worker logs. */
static int l_redirect_stderr(lua_State *L)
{
    static int saved = -1;
    fflush(stderr);
    if (lua_isnoneornil(L, 1)) {
        if (saved >= 0) dup2(saved, 2), close(saved), saved = -1;
        return 0;
    }
    int fd = open(luaL_checkstring(L, 1), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return luaL_error(L, "cannot open %s", lua_tostring(L, 1));
    if (saved < 0) saved = dup(2);
    dup2(fd, 2);
    close(fd);
    return 0;
}

/* core.broker_check(url): true, or nil and what is wrong with it (the CLI asks
 * before starting anything, so a typo is one clear line). */
static int l_broker_check(lua_State *L)
{
    const char *bootstrap;
    char err[512];
    if (fs_broker_url_check(luaL_checkstring(L, 1), &bootstrap, err, sizeof err) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* core.log_hold(on): see fs_log_hold. */
static int l_log_hold(lua_State *L)
{
    fs_log_hold(lua_toboolean(L, 1));
    return 0;
}

/* core.index_op(): the opcode of the instruction that the Lua function two
 * levels up is running (nil when that function is not Lua). A table's __index
 * (level 1) asks it to tell `t:update(k, fn)` from `t["update"]`: both index t
 * with "update", but Lua compiles a method call to an instruction of its own
 * (SELF), and the public debug API names neither the instruction nor the
 * program counter. So this reads the saved pc from the frame record that
 * lua_getstack hands out: in every Lua 5.4 release a frame record starts with
 * four pointer-sized fields (function, top, previous, next) followed, for a
 * Lua function, by its saved pc, which points just past the instruction being
 * run. fstream.table asks once at load which opcodes a method call and the
 * three kinds of read give, and refuses to load if they are not told apart. */
#if LUA_VERSION_NUM != 504
#error "core.index_op reads a Lua 5.4 frame record"
#endif
struct lua54_frame {
    void *func, *top, *previous, *next;
    const uint32_t *savedpc;
};

static int l_index_op(lua_State *L)
{
    lua_Debug ar;
    if (!lua_getstack(L, 2, &ar) || !lua_getinfo(L, "S", &ar) || ar.what[0] == 'C') return 0;
    const struct lua54_frame *f = (const struct lua54_frame *)(const void *)ar.i_ci;
    lua_pushinteger(L, (lua_Integer)(f->savedpc[-1] & 0x7F)); /* the opcode: the low 7 bits */
    return 1;
}

static int l_set_log_level(lua_State *L)
{
    int lv = fs_log_parse_level(luaL_checkstring(L, 1));
    if (lv < 0) return luaL_error(L, "unknown log level '%s'", lua_tostring(L, 1));
    fs_log_level = lv;
    return 0;
}

static int l_log(lua_State *L)
{
    int lv = fs_log_parse_level(luaL_checkstring(L, 1));
    if (lv < 0) lv = FS_LOG_INFO;
    if (lv >= fs_log_level) fs_log(lv, "%s", luaL_checkstring(L, 2));
    return 0;
}

static int l_log_enabled(lua_State *L)
{
    int lv = fs_log_parse_level(luaL_checkstring(L, 1));
    lua_pushboolean(L, lv >= fs_log_level);
    return 1;
}

/* core.run_broker{brokers=N, address_file=F, control=FIFO, partitions=P, topics={name...}} */
static int l_run_broker(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    fs_broker_opts o = {0};
    lua_getfield(L, 1, "brokers");
    o.brokers = (int)luaL_optinteger(L, -1, 1);
    lua_getfield(L, 1, "address_file");
    o.address_file = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 1, "control");
    o.control = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 1, "partitions");
    o.partitions = (int)luaL_optinteger(L, -1, 8);
    lua_getfield(L, 1, "topics"); /* stays on the stack: it keeps the names alive */
    int tix = lua_gettop(L);
    const char *small[16], **names = small;
    if (lua_istable(L, -1)) {
        o.ntopics = (int)luaL_len(L, -1);
        if (o.ntopics > 16 && !(names = lua_newuserdatauv(L, (size_t)o.ntopics * sizeof *names, 0)))
            return luaL_error(L, "out of memory");
        for (int i = 0; i < o.ntopics; i++) {
            lua_geti(L, tix, i + 1);
            names[i] = luaL_checkstring(L, -1);
            lua_pop(L, 1); /* a string in the table stays alive */
        }
    }
    o.topics = names;
    char err[512];
    if (fs_broker_serve(&o, err, sizeof err)) return luaL_error(L, "%s", err);
    return 0;
}

/* core.trace_child(traceparent) -> the traceparent of a child span (same
 * trace id and flags, a new span id), or nil when the argument is not a
 * valid W3C traceparent. Dead letters and retries use it (fstream/agent.lua). */
static int l_trace_child(lua_State *L)
{
    size_t len;
    const char *tp = lua_tolstring(L, 1, &len);
    if (lua_type(L, 1) != LUA_TSTRING || !fs_trace_valid(tp, len)) return 0;
    char child[FS_TRACEPARENT_LEN];
    fs_trace_child(tp, child);
    lua_pushlstring(L, child, sizeof child);
    return 1;
}

/* core.regex(re) -> a compiled POSIX extended regular expression (pattern
 * topics: "^events-.*", the syntax Kafka clients use for topic patterns);
 * r:match(s) -> whether it matches somewhere in s (anchor with ^ and $).
 * A bad expression raises with regerror's reason. */
#define REGEX_MT "fstream.Regex"

typedef struct {
    regex_t re;
    int live;
} regex_ud;

static int l_regex_gc(lua_State *L)
{
    regex_ud *u = luaL_checkudata(L, 1, REGEX_MT);
    if (u->live) regfree(&u->re);
    u->live = 0;
    return 0;
}

static int l_regex_match(lua_State *L)
{
    regex_ud *u = luaL_checkudata(L, 1, REGEX_MT);
    const char *s = luaL_checkstring(L, 2);
    lua_pushboolean(L, u->live && regexec(&u->re, s, 0, NULL, 0) == 0);
    return 1;
}

static int l_regex(lua_State *L)
{
    const char *src = luaL_checkstring(L, 1);
    regex_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->live = 0;
    if (luaL_newmetatable(L, REGEX_MT)) {
        lua_pushcfunction(L, l_regex_gc);
        lua_setfield(L, -2, "__gc");
        lua_newtable(L);
        lua_pushcfunction(L, l_regex_match);
        lua_setfield(L, -2, "match");
        lua_setfield(L, -2, "__index");
    }
    lua_setmetatable(L, -2);
    int e = regcomp(&u->re, src, REG_EXTENDED | REG_NOSUB);
    if (e) {
        char why[200];
        regerror(e, &u->re, why, sizeof why);
        return luaL_error(L, "bad regular expression '%s': %s", src, why);
    }
    u->live = 1;
    return 1;
}

const luaL_Reg fs_lua_misc_funcs[] = {
    {"regex", l_regex},
    {"trace_child", l_trace_child},
    {"index_op", l_index_op},
    {"redirect_stderr", l_redirect_stderr},
    {"set_log_level", l_set_log_level},
    {"log", l_log},
    {"log_hold", l_log_hold},
    {"log_enabled", l_log_enabled},
    {"run_broker", l_run_broker},
    {"broker_check", l_broker_check},
    {NULL, NULL},
};
