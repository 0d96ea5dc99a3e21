/* fstream-lua: command-line entry. Parses argv into a table and hands it to
 * fstream.cli (lua/fstream/cli.lua), which does the work. */
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_bundle.h"
#include "fs_log.h"
#include "fs_lua.h"

#define USAGE                                                                                      \
    "usage: fstream-lua worker APP.lua [-l debug|info|warn|error] [--broker URL] [--store URL]\n"  \
    "                   [--reload]\n"                                                           \
    "       fstream-lua send APP.lua TOPIC|@AGENT [--key K] [--partition N] [--repeat N]\n"        \
    "                   [--broker URL] VALUE\n"                                                    \
    "       fstream-lua agents APP.lua | tables APP.lua | reset APP.lua [--store URL]\n"          \
    "       fstream-lua table APP.lua NAME [--key K] [--store URL]\n"                              \
    "       fstream-lua broker [--brokers N] [--partitions N] [--topic NAME]... [--address-file F]\n" \
    "       fstream-lua --version | --help | COMMAND --help\n"

int luaopen_fstream_core(lua_State *L);

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "fstream-lua: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", USAGE);
    return 2;
}

struct opt {
    const char *cmd, *longname, *shortname, *field;
    int takes_value, repeat;
};

/* Options per command; anything else is a usage error. */
static const struct opt opts[] = {
    {"worker", "--loglevel", "-l", "loglevel", 1, 0},
    {"worker", "--broker", NULL, "broker", 1, 0},
    {"worker", "--store", NULL, "store", 1, 0},
    {"worker", "--reload", NULL, "reload", 0, 0},
    {"tables", "--store", NULL, "store", 1, 0},
    {"table", "--store", NULL, "store", 1, 0},
    {"table", "--key", "-k", "key", 1, 0},
    {"reset", "--store", NULL, "store", 1, 0},
    {"send", "--key", "-k", "key", 1, 0},
    {"send", "--partition", "-p", "partition", 1, 0},
    {"send", "--repeat", "-n", "repeat", 1, 0},
    {"send", "--broker", NULL, "broker", 1, 0},
    {"send", "--loglevel", "-l", "loglevel", 1, 0},
    {"agents", "--broker", NULL, "broker", 1, 0},
    {"broker", "--brokers", NULL, "brokers", 1, 0},
    {"broker", "--partitions", NULL, "partitions", 1, 0},
    {"broker", "--topic", NULL, "topics", 1, 1},
    {"broker", "--address-file", NULL, "address_file", 1, 0},
    {NULL, NULL, NULL, NULL, 0, 0},
};

static const char *positional[][3] = {
    {"worker", "app", NULL}, {"send", "app", "target"}, {"agents", "app", NULL},
    {"broker", NULL, NULL},  {"tables", "app", NULL},   {"table", "app", NULL},
    {"reset", "app", NULL},
};
#define NCOMMANDS (int)(sizeof positional / sizeof positional[0])

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(non-string error)", 1);
    return 1;
}

static int load_bundled(lua_State *L)
{
    const struct fs_bundled *b = lua_touserdata(L, lua_upvalueindex(1));
    if (luaL_loadbuffer(L, b->src, b->len, b->chunkname)) return lua_error(L);
    lua_pushstring(L, b->name);
    lua_call(L, 1, 1);
    return 1;
}

/* Bundled modules go into package.preload, unless FSTREAM_LUA_DIR points at a
 * source tree to load them from (development). */
static void install_modules(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_fstream_core);
    lua_setfield(L, -2, "fstream.core");
    const char *dir = getenv("FSTREAM_LUA_DIR");
    if (dir && *dir) {
        lua_getglobal(L, "package");
        lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
        lua_getfield(L, -2, "path");
        lua_concat(L, 2);
        lua_setfield(L, -2, "path");
        lua_pop(L, 1);
    } else {
        for (const struct fs_bundled *b = fs_bundle; b->name; b++) {
            lua_pushlightuserdata(L, (void *)b);
            lua_pushcclosure(L, load_bundled, 1);
            lua_setfield(L, -2, b->name);
        }
    }
    lua_pop(L, 1);
}

/* Runs a started worker's loop outside any Lua call, so that a reload may close
 * the state that started it; returns the state in use when the loop ended. */
static lua_State *run_worker(fs_rt *rt, int *code_out)
{
    int code = fs_rt_run(rt);
    lua_State *L = rt->L;
    lua_settop(L, 0);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, "fstream.cli");
    if (lua_pcall(L, 1, 1, 1) == LUA_OK) {
        lua_getfield(L, -1, "stopped");
        lua_pushinteger(L, code);
        if (lua_pcall(L, 1, 0, 1)) fprintf(stderr, "fstream-lua: %s\n", lua_tostring(L, -1));
    } else {
        fprintf(stderr, "fstream-lua: internal error: %s\n", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
    *code_out = code;
    return L;
}

/* A Lua state with the standard libraries and fstream's modules: the worker's
 * first, and each version a reload loads (fs_reload.c). */
static lua_State *host_state(void)
{
    lua_State *L = luaL_newstate();
    if (!L) return NULL;
    luaL_openlibs(L);
    /* Agents create many short-lived tables (decoded values, messages): the
     * generational collector handles those for less than the incremental one. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    install_modules(L);
    return L;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage_error("%s", "missing command");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("fstream-lua %s\n", FS_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        printf("%s", USAGE);
        return 0;
    }
    int known = -1;
    for (int i = 0; i < NCOMMANDS; i++)
        if (strcmp(cmd, positional[i][0]) == 0) known = i;
    if (known < 0) return usage_error("unknown command '%s'", cmd);

    /* librdkafka's threads inherit this mask: the loop reads these from a signalfd. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    /* A worker takes SIGTERM/SIGINT on a thread of its own from now on, so that a
     * stop requested while it starts (recovering tables) is seen, and a second
     * signal always exits at once. */
    if (strcmp(cmd, "worker") == 0 && fs_signals_start())
        fprintf(stderr, "fstream-lua: cannot start the signal thread: SIGTERM will not stop the worker gracefully\n");

    /* Agents print: show each line as it happens even when stdout is a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    fs_host_new_state = host_state;
    lua_State *L = host_state();
    if (!L) return 1;

    lua_newtable(L); /* options */
    int npos = 0;
    lua_newtable(L); /* extra positional words */
    int nextra = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            printf("%s", USAGE);
            lua_close(L);
            return 0;
        }
        if (a[0] == '-' && a[1] != 0 && !(a[1] >= '0' && a[1] <= '9')) {
            const struct opt *o = NULL;
            const char *val = NULL;
            for (const struct opt *p = opts; p->cmd; p++) {
                if (strcmp(p->cmd, cmd) != 0) continue;
                size_t ln = strlen(p->longname);
                if (strcmp(a, p->longname) == 0 || (p->shortname && strcmp(a, p->shortname) == 0)) {
                    o = p;
                } else if (strncmp(a, p->longname, ln) == 0 && a[ln] == '=') {
                    o = p;
                    val = a + ln + 1;
                }
                if (o) break;
            }
            if (!o) {
                lua_close(L);
                return usage_error("unknown option '%s'", a);
            }
            if (!val && !o->takes_value) val = "1";
            if (!val) {
                if (i + 1 >= argc) {
                    lua_close(L);
                    return usage_error("option '%s' needs a value", a);
                }
                val = argv[++i];
            }
            if (o->repeat) {
                lua_getfield(L, -2, o->field);
                if (lua_isnil(L, -1)) {
                    lua_pop(L, 1);
                    lua_newtable(L);
                    lua_pushvalue(L, -1);
                    lua_setfield(L, -4, o->field);
                }
                lua_pushstring(L, val);
                lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
                lua_pop(L, 1);
            } else {
                lua_pushstring(L, val);
                lua_setfield(L, -3, o->field);
            }
            continue;
        }
        if (npos < 2 && positional[known][1 + npos]) {
            lua_pushstring(L, a);
            lua_setfield(L, -3, positional[known][1 + npos]);
            npos++;
        } else {
            lua_pushstring(L, a);
            lua_rawseti(L, -2, ++nextra);
        }
    }
    lua_setfield(L, -2, "args");
    int needed = (positional[known][1] != NULL) + (positional[known][2] != NULL);
    if (npos < needed) {
        lua_close(L);
        return usage_error("'%s' needs more arguments", cmd);
    }
    lua_getfield(L, -1, "loglevel");
    if (lua_isstring(L, -1)) {
        int lv = fs_log_parse_level(lua_tostring(L, -1));
        if (lv < 0) {
            const char *bad = lua_tostring(L, -1);
            int rc = usage_error("unknown log level '%s'", bad);
            lua_close(L);
            return rc;
        }
        fs_log_level = lv;
    }
    lua_pop(L, 1);

    int opts_idx = lua_gettop(L);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, "fstream.cli");
    int rc = 1;
    if (lua_pcall(L, 1, 1, opts_idx + 1)) {
        fprintf(stderr, "fstream-lua: internal error: %s\n", lua_tostring(L, -1));
    } else {
        lua_getfield(L, -1, "main");
        lua_pushstring(L, cmd);
        lua_pushvalue(L, opts_idx);
        if (lua_pcall(L, 2, 2, opts_idx + 1)) {
            fprintf(stderr, "fstream-lua: %s\n", lua_tostring(L, -2));
        } else {
            rc = (int)luaL_optinteger(L, -2, 0);
            rt_ud *u = luaL_testudata(L, -1, RT_MT);
            if (u && u->rt) L = run_worker(u->rt, &rc);
        }
    }
    fflush(stdout);
    lua_close(L);
    return rc;
}
