/* fstream-lua: command-line entry. Hands argv to fstream.cli
 * (lua/fstream/cli.lua), which holds the one definition of the commands and
 * their options and does the work; main.c sets up the process around it
 * (signals, the Lua state, the worker's loop). */
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_worker.h"
#include "fs_reload.h"
#include "fs_supervise.h"
#include "fs_bundle.h"
#include "fs_call.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_mem.h"

int luaopen_fstream_core(lua_State *L);

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
    /* Counting allocator: max_memory (fs_mem.h) is set once the app is loaded. */
    lua_State *L = fs_mem_newstate();
    if (!L) return NULL;
    luaL_openlibs(L);
    /* Agents create many short-lived tables (decoded values, messages): the
     * generational collector handles those for less than the incremental one. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    install_modules(L);
    return L;
}

/* Pushes function `name` of fstream.cli; on failure prints why and returns 0. */
static int cli_function(lua_State *L, const char *name)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, "fstream.cli");
    if (fs_call(L, 1, 1, FS_CALL_TRACEBACK)) {
        fprintf(stderr, "fstream-lua: internal error: %s\n", lua_tostring(L, -1));
        return 0;
    }
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    return 1;
}

/* Asks fstream.cli for the workers' command lines (it checks N and the app,
 * and refuses memory://), then supervises them: the exit code. */
static int supervise(lua_State *L, int opts_idx, char *argv0)
{
    fs_log_set_tag("supervisor");
    if (!cli_function(L, "workers")) return 1;
    lua_pushvalue(L, opts_idx);
    if (fs_call(L, 1, 2, FS_CALL_TRACEBACK)) {
        fprintf(stderr, "fstream-lua: internal error: %s\n", lua_tostring(L, -1));
        return 1;
    }
    if (!lua_istable(L, -2)) return (int)luaL_optinteger(L, -1, 1);
    lua_pop(L, 1);
    int n = (int)luaL_len(L, -1);
    /* Each argv's strings stay in the Lua state (the list is on its stack) for the call. */
    char ***argvs = calloc((size_t)n, sizeof *argvs);
    int ok = argvs != NULL;
    for (int i = 0; i < n && ok; i++) {
        lua_rawgeti(L, -1, i + 1);
        int words = (int)luaL_len(L, -1);
        argvs[i] = calloc((size_t)words + 2, sizeof **argvs);
        ok = argvs[i] != NULL;
        if (ok) argvs[i][0] = argv0;
        for (int j = 1; ok && j <= words; j++) {
            lua_rawgeti(L, -1, j);
            argvs[i][j] = (char *)lua_tostring(L, -1);
            lua_pop(L, 1); /* the string stays referenced by the list */
        }
        lua_pop(L, 1);
    }
    int rc = 1;
    if (ok) {
        rc = fs_supervise(n, (char *const *const *)argvs);
    } else {
        fprintf(stderr, "fstream-lua: out of memory\n");
    }
    for (int i = 0; argvs && i < n; i++) free(argvs[i]);
    free(argvs);
    return rc;
}

int main(int argc, char **argv)
{
    /* librdkafka's threads inherit this mask: the watch thread and the loop's
     * signalfd take these signals. */
    fs_signals_block();

    /* Agents print: show each line as it happens even when stdout is a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    fs_host_new_state = host_state;
    lua_State *L = host_state();
    if (!L) {
        fprintf(stderr, "fstream-lua: out of memory\n");
        return 1;
    }
    /* The command line is defined once, in fstream.cli: it reads argv and
     * answers with the command and its options, or the exit code of a line
     * that asked for help or was wrong. */
    int rc = 1;
    if (!cli_function(L, "parse")) goto done;
    lua_createtable(L, argc > 1 ? argc - 1 : 0, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (fs_call(L, 1, 2, FS_CALL_TRACEBACK)) {
        fprintf(stderr, "fstream-lua: internal error: %s\n", lua_tostring(L, -1));
        goto done;
    }
    if (lua_isnil(L, -2)) {
        rc = (int)luaL_optinteger(L, -1, 1);
        goto done;
    }
    int cmd_idx = lua_gettop(L) - 1, opts_idx = cmd_idx + 1;

    /* A worker under `--workers N`: tag its log lines with its index. */
    const char *index = getenv("FSTREAM_WORKER_INDEX");
    if (index && *index && strcmp(lua_tostring(L, cmd_idx), "worker") == 0) {
        char tag[24];
        snprintf(tag, sizeof tag, "w%.8s", index);
        fs_log_set_tag(tag);
    }
    /* `worker --workers N`: this process becomes their supervisor. */
    lua_getfield(L, opts_idx, "workers");
    int supervised = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (supervised && strcmp(lua_tostring(L, cmd_idx), "worker") == 0) {
        rc = supervise(L, opts_idx, argv[0]);
        goto done;
    }

    /* A worker takes SIGTERM/SIGINT on a thread of its own from now on, so that a
     * stop requested while it starts (recovering tables) is seen, and a second
     * signal always exits at once. */
    if ((strcmp(lua_tostring(L, cmd_idx), "worker") == 0 || strcmp(lua_tostring(L, cmd_idx), "app_command") == 0) &&
        fs_signals_start())
        fprintf(stderr, "fstream-lua: cannot start the signal thread: SIGTERM will not stop the worker gracefully\n");

    if (!cli_function(L, "main")) goto done;
    lua_pushvalue(L, cmd_idx);
    lua_pushvalue(L, opts_idx);
    if (fs_call(L, 2, 2, FS_CALL_TRACEBACK)) {
        fs_log_hold(0); /* what the failed command logged comes first */
        /* the handler's traceback: always a string */
        fprintf(stderr, "fstream-lua: %s\n", lua_tostring(L, -1));
    } else {
        rc = (int)luaL_optinteger(L, -2, 0);
        rt_ud *u = luaL_testudata(L, -1, RT_MT);
        if (!u) u = luaL_testudata(L, -1, RT_TEST_MT); /* a worker with test hooks (specs) */
        if (u && u->rt) L = run_worker(u->rt, &rc);
    }
done:
    fflush(stdout);
    fs_mem_close(L);
    return rc;
}
