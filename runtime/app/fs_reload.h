/* fs_reload: hot reload (a new Lua state takes over the running worker).
 * App layer. */
#ifndef FS_RELOAD_H
#define FS_RELOAD_H

#include <lauxlib.h>
#include <lua.h>

#include "fs_rt.h"

/* fs_reload.c: hot reload. main.c provides the factory of fresh states (its
 * bundled modules); without it (the in-process specs) reload is unavailable. */
extern lua_State *(*fs_host_new_state)(void);
/* fs_lua_reload.c: the runtime methods of reload (fs_lua_module.c adds them). */
extern const luaL_Reg fs_lua_reload_methods[];
int fs_reload_setup(fs_rt *rt, const char *path, const char *broker, const char *store, int watch,
                    const char *broker_url, const char *data_dir, char *err, size_t errlen);
int fs_reload_watching(fs_rt *rt);
int fs_reload_watch(fs_rt *rt, const char *const *files, int n); /* replaces the watched set */
void fs_reload_request(fs_rt *rt, const char *why, int64_t delay_ms);
void fs_reload_poll(fs_rt *rt);
void fs_reload_free(fs_rt *rt);
/* A reload, as /metrics and the dashboard show it (fs_lua_reload.c:
 * rt:reload_stats()). */
enum { FS_RELOAD_HIST = 16 };
struct fs_reload_event {
    int64_t at_ms;    /* wall clock, ms since the epoch */
    int ok;           /* 0: the new version was refused, the old one runs on */
    int64_t pause_ms; /* events paused, drain to resume */
    char msg[256];    /* the script (ok) or why it was refused; a longer one ends in "..." */
};
/* The ring of the last reloads (event i of n at hist[i % FS_RELOAD_HIST])
 * and the counts; NULL when this worker cannot reload. */
const struct fs_reload_event *fs_reload_history(fs_rt *rt, int64_t *reloads, int64_t *failures,
                                                int64_t *pause_ms_sum, int64_t *n);
/* Called by the new version once it declared everything (rt:rebound()). */
int fs_reload_rebound(fs_rt *rt, char *err, size_t errlen);


#endif
