/* fstream-lua: command-line entry. Parses argv into a table and hands it to
 * fstream.cli (lua/fstream/cli.lua), which does the work. */
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_bundle.h"
#include "fs_call.h"
#include "fs_log.h"
#include "fs_lua.h"

#define USAGE                                                                                       \
    "usage: fstream-lua worker APP.lua [-l debug|info|warn|error] [--broker URL] [--store URL]\n"   \
    "                          [--reload]\n"                                                       \
    "       fstream-lua send APP.lua TOPIC|@AGENT [--key K] [--partition N] [--repeat N]\n"         \
    "                        [--broker URL] [-l LEVEL] VALUE\n"                                    \
    "       fstream-lua agents APP.lua\n"                                                          \
    "       fstream-lua tables APP.lua [--store URL]\n"                                            \
    "       fstream-lua table APP.lua NAME [--key K] [--store URL]\n"                              \
    "       fstream-lua reset APP.lua [--store URL]\n"                                             \
    "       fstream-lua broker [--brokers N] [--partitions N] [--topic NAME]... [--address-file FILE]\n" \
    "       fstream-lua --version | --help | COMMAND --help\n"

int luaopen_fstream_core(lua_State *L);

/* Each command: its positional words (NULL: none) and its own usage, printed
 * by `COMMAND --help` (synopsis and details) and after a usage error (the
 * synopsis only). */
static const struct command {
    const char *name, *pos[2], *synopsis, *details;
} commands[] = {
    {"worker", {"app", NULL},
     "usage: fstream-lua worker APP.lua [-l debug|info|warn|error] [--broker URL] [--store URL]\n"
     "                          [--reload]\n",
     "Runs the app's agents, tasks and timers until SIGTERM or SIGINT (a second one exits at once).\n"
     "  -l, --loglevel LEVEL  debug, info (default), warn or error\n"
     "  --broker URL          memory:// or kafka://HOST[:PORT][,HOST[:PORT]...]; default\n"
     "                        $FSTREAM_BROKER, then the app's broker option\n"
     "  --store URL           lmdb://DIR for the tables' files; default the app's store option\n"
     "  --reload              load the new version when the app's files change (SIGHUP too)\n"},
    {"send", {"app", "target"},
     "usage: fstream-lua send APP.lua TOPIC|@AGENT [--key K] [--partition N] [--repeat N]\n"
     "                        [--broker URL] [-l LEVEL] VALUE\n",
     "Sends VALUE to TOPIC, or to the topic of the app's agent AGENT, and prints\n"
     "topic[partition]@offset. VALUE is JSON when the topic's value serializer is json.\n"
     "  -k, --key K           the message's key\n"
     "  -p, --partition N     the partition (from 0); default: by key\n"
     "  -n, --repeat N        send it N times (default 1)\n"
     "  --broker URL          as for worker\n"
     "  -l, --loglevel LEVEL  debug, info (default), warn or error\n"},
    {"agents", {"app", NULL}, "usage: fstream-lua agents APP.lua\n",
     "Lists the app's agents: name <- topics it reads -> its sinks.\n"},
    {"tables", {"app", NULL}, "usage: fstream-lua tables APP.lua [--store URL]\n",
     "Lists the app's tables: partitions, changelog topic, partitions stored locally.\n"
     "  --store URL           lmdb://DIR; default the app's store option\n"},
    {"table", {"app", NULL}, "usage: fstream-lua table APP.lua NAME [--key K] [--store URL]\n",
     "Prints the entries of table NAME stored on this machine, one JSON line each\n"
     "({\"key\":..., \"value\":..., \"partition\":...}); reads the files, needs no broker.\n"
     "  -k, --key K           only this key (exit 1 when it is not there)\n"
     "  --store URL           lmdb://DIR; default the app's store option\n"},
    {"reset", {"app", NULL}, "usage: fstream-lua reset APP.lua [--store URL]\n",
     "Deletes the app's local table files; the changelogs on the broker stay, and the next\n"
     "worker rebuilds the tables from them.\n"
     "  --store URL           lmdb://DIR; default the app's store option\n"},
    {"broker", {NULL, NULL},
     "usage: fstream-lua broker [--brokers N] [--partitions N] [--topic NAME]... [--address-file FILE]\n",
     "Runs an embedded Kafka broker (in memory) until SIGTERM or SIGINT; workers reach it\n"
     "as kafka://ADDRESS, the address it prints.\n"
     "  --brokers N           brokers in the cluster, 1 to 16 (default 1)\n"
     "  --partitions N        partitions of the topics named with --topic (default 8)\n"
     "  --topic NAME          create this topic at start (repeatable)\n"
     "  --address-file FILE   write the address to FILE once listening\n"},
};
#define NCOMMANDS (int)(sizeof commands / sizeof commands[0])

static int usage_error(const struct command *c, const char *fmt, const char *arg)
{
    fprintf(stderr, "fstream-lua: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", c ? c->synopsis : USAGE);
    if (c) fprintf(stderr, "(fstream-lua %s --help tells more)\n", c->name);
    return 2;
}

static int command_help(const struct command *c)
{
    printf("%s\n%s", c->synopsis, c->details);
    return 0;
}

static const struct command *find_command(const char *name)
{
    for (int i = 0; i < NCOMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0) return &commands[i];
    return NULL;
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
    lua_getglobal(L, "require");
    lua_pushstring(L, "fstream.cli");
    if (fs_call(L, 1, 1, FS_CALL_TRACEBACK) == LUA_OK) {
        lua_getfield(L, -1, "stopped");
        lua_pushinteger(L, code);
        if (fs_call(L, 1, 0, FS_CALL_TRACEBACK))
            fprintf(stderr, "fstream-lua: %s\n", lua_tostring(L, -1));
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
    if (argc < 2) return usage_error(NULL, "%s", "missing command");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("fstream-lua %s\n", FS_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        if (argc > 2) { /* help COMMAND */
            const struct command *c = find_command(argv[2]);
            if (!c) return usage_error(NULL, "unknown command '%s'", argv[2]);
            return command_help(c);
        }
        printf("%s", USAGE);
        return 0;
    }
    const struct command *command = find_command(cmd);
    if (!command) return usage_error(NULL, "unknown command '%s'", cmd);
    /* COMMAND --help wins over whatever else is on the line. */
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return command_help(command);

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
                return usage_error(command, "unknown option '%s'", a);
            }
            if (val && !o->takes_value) {
                lua_close(L);
                return usage_error(command, "option '%s' takes no value", o->longname);
            }
            if (!o->takes_value) val = "1";
            if (!val) {
                if (i + 1 >= argc) {
                    lua_close(L);
                    return usage_error(command, "option '%s' needs a value", a);
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
        if (npos < 2 && command->pos[npos]) {
            lua_pushstring(L, a);
            lua_setfield(L, -3, command->pos[npos]);
            npos++;
        } else {
            lua_pushstring(L, a);
            lua_rawseti(L, -2, ++nextra);
        }
    }
    lua_setfield(L, -2, "args");
    if (npos < 2 && command->pos[npos]) {
        lua_close(L);
        const char *what = strcmp(command->pos[npos], "app") == 0 ? "APP.lua" : "TOPIC|@AGENT";
        return usage_error(command, "missing %s", what);
    }
    lua_getfield(L, -1, "loglevel");
    if (lua_isstring(L, -1)) {
        int lv = fs_log_parse_level(lua_tostring(L, -1));
        if (lv < 0) {
            const char *bad = lua_tostring(L, -1);
            int rc =
                usage_error(command, "unknown log level '%s' (debug, info, warn or error)", bad);
            lua_close(L);
            return rc;
        }
        fs_log_level = lv;
    }
    lua_pop(L, 1);

    int opts_idx = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "fstream.cli");
    int rc = 1;
    if (fs_call(L, 1, 1, FS_CALL_TRACEBACK)) {
        fprintf(stderr, "fstream-lua: internal error: %s\n", lua_tostring(L, -1));
    } else {
        lua_getfield(L, -1, "main");
        lua_pushstring(L, cmd);
        lua_pushvalue(L, opts_idx);
        if (fs_call(L, 2, 2, FS_CALL_TRACEBACK)) {
            fs_log_hold(0); /* what the failed command logged comes first */
            /* the handler's traceback: always a string */
            fprintf(stderr, "fstream-lua: %s\n", lua_tostring(L, -1));
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
