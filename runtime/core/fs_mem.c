/* fs_mem: the counting allocator of the Lua state (see fs_mem.h). */
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fs_mem.h"

int fs_mem_guard;

typedef struct fs_mem {
    size_t used;           /* bytes the state holds: Lua's own total, kept here too */
    size_t limit;          /* SIZE_MAX: none */
    unsigned long refused; /* allocations refused because of the limit */
    int retrying;          /* the last growth was refused: the next one is Lua's retry */
    lua_Alloc prev;        /* a state made elsewhere: its allocator, which we wrap */
    void *prev_ud;
    int owned;             /* made by fs_mem_newstate: freed by fs_mem_close */
    struct fs_mem *next;   /* wrapped states: kept reachable for the process's life */
} fs_mem;

/* Counters of states made elsewhere: their owner closes them with lua_close,
 * so they live as long as the process (one per such state, a few bytes). */
static fs_mem *wrapped;

static void *mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    fs_mem *m = ud;
    size_t old = ptr ? osize : 0; /* without a block, osize tells its kind */
    if (nsize == 0) {
        m->used -= old;
        if (m->prev) return m->prev(m->prev_ud, ptr, osize, 0);
        free(ptr);
        return NULL;
    }
    /* Lua requires that shrinking never fails: only growth is refused. A
     * refusal makes Lua collect all garbage and ask again; that retry must
     * leave 1/16 of the limit free. Otherwise a coroutine whose live data
     * nearly fills the limit goes on, each allocation past it costing a
     * full collection of everything the state holds that frees a little
     * garbage: a runaway agent then fails after 4x as many full
     * collections (56 instead of 14 for three 64 MiB hogs). */
    if (nsize > old) {
        size_t cap = m->retrying ? m->limit - m->limit / 16 : m->limit;
        m->retrying = 0;
        if (fs_mem_guard && m->used + (nsize - old) > cap) {
            m->refused++;
            m->retrying = 1;
            return NULL;
        }
    }
    void *p = m->prev ? m->prev(m->prev_ud, ptr, osize, nsize) : realloc(ptr, nsize);
    if (p) m->used += nsize - old; /* wraps around for a shrink: still exact */
    return p;
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "fstream-lua: unprotected error in a call to Lua: %s\n", msg ? msg : "(not a string)");
    return 0; /* Lua aborts */
}

lua_State *fs_mem_newstate(void)
{
    fs_mem *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->limit = SIZE_MAX;
    m->owned = 1;
    lua_State *L = lua_newstate(mem_alloc, m);
    if (!L) {
        free(m);
        return NULL;
    }
    lua_atpanic(L, panic);
    return L;
}

static fs_mem *counter(lua_State *L)
{
    void *ud;
    return lua_getallocf(L, &ud) == mem_alloc ? ud : NULL;
}

void fs_mem_close(lua_State *L)
{
    fs_mem *m = counter(L);
    lua_close(L);
    if (m && m->owned) free(m);
}

int fs_mem_set_limit(lua_State *L, size_t limit)
{
    fs_mem *m = counter(L);
    if (!m) {
        if (!limit) return 0; /* nothing to enforce: leave the allocator alone */
        m = calloc(1, sizeof *m);
        if (!m) return -1;
        m->prev = lua_getallocf(L, &m->prev_ud);
        /* From now on every block is freed through here: start from what the
         * state holds, Lua's own count, so that the count stays exact. */
        m->used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
        m->next = wrapped;
        wrapped = m;
        lua_setallocf(L, mem_alloc, m);
    }
    m->limit = limit ? limit : SIZE_MAX;
    return 0;
}

int fs_mem_get(lua_State *L, size_t *used, size_t *limit, unsigned long *refused)
{
    fs_mem *m = counter(L);
    if (!m) return 0;
    *used = m->used;
    *limit = m->limit == SIZE_MAX ? 0 : m->limit;
    *refused = m->refused;
    return 1;
}
