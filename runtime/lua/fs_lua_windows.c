/* fs_lua_windows: core.windows, the Lua face of fs_windows (Lua layer).
 *
 * lua/fstream/window.lua keeps the policy (event times, the user's update,
 * combine and close functions, on_late); this file keeps the bookkeeping per
 * event in C: one call (touch) updates the partition's stream time, finds or
 * opens every window the event belongs to and hands back their entry keys as
 * Lua strings, so an update's Lua work is the user's function and the record
 * cache. Closing is driven by the window index too: `pop` yields the due
 * windows in closing order, and `wait` parks the table's closer task on the
 * loop's timer heap until something is due.
 *
 * Each index is a userdata owning one fs_windows. Its user values:
 *   1  slot -> the entry key (Lua string) of every open window
 *   2  slot -> the Lua value of every key with open windows
 *   3  the runtime's userdata (from bind), for the clock and the loop
 * The userdata lives in the Lua state of one app version: a reload builds a
 * new index from the store (hold), so nothing here outlives its state. Its
 * timer is the waiting closer coroutine's own (fs_co.timer): the scheduler
 * stops it when that coroutine dies, so no timer outlives its owner. */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_buf.h"
#include "fs_json.h"
#include "fs_lua.h"
#include "fs_worker.h"
#include "fs_rt.h"
#include "fs_vec.h"
#include "fs_windows.h"

#define WINDOWS_MT "fstream.Windows"

enum { UV_KB = 1, UV_KEYS = 2, UV_RT = 3 };
enum { KIND_HOPPING = 0, KIND_SLIDING = 1, KIND_COMBINE = 2, KIND_SESSION = 3 };

typedef FS_VEC(int) slot_vec;

/* A window opened by an event whose update has not confirmed it yet. */
typedef struct {
    fs_win *win;
    int32_t p;
} pend_t;

typedef struct {
    fs_windows *w;
    int kind, now_mode;
    int size_int, step_int;
    slot_vec free_kb, free_key; /* recycled slots of user values 1 and 2 */
    int nkb, nkey;                 /* slots handed out so far */
    FS_VEC(pend_t) pend;
    FS_VEC(fs_win *) cand; /* sliding: an event's windows */
    fs_buf key, kb;        /* an event's key JSON; a new window's entry key */
    fs_co *waiter;         /* the closer task parked in wait, or NULL */
    int64_t interval_ms;   /* timer-driven passes are at least this far apart */
    int64_t last_pass;     /* loop clock of the last timer-driven pass */
    int64_t idle_ms;       /* idle_close: a partition quiet this long follows the clock; 0: off */
} win_ud;

static win_ud *check_ud(lua_State *L)
{
    win_ud *u = luaL_checkudata(L, 1, WINDOWS_MT);
    if (!u->w) luaL_error(L, "window index is closed");
    return u;
}

/* The runtime this index was bound to, or NULL (not bound, or closed). */
static fs_rt *ud_rt(lua_State *L, int idx)
{
    lua_getiuservalue(L, idx, UV_RT);
    rt_ud *r = luaL_testudata(L, -1, RT_MT);
    if (!r) r = luaL_testudata(L, -1, RT_TEST_MT);
    lua_pop(L, 1);
    return r ? r->rt : NULL;
}

static int32_t check_part(lua_State *L, int idx)
{
    lua_Integer p = luaL_checkinteger(L, idx);
    return p >= 0 && p <= INT32_MAX ? (int32_t)p : -1;
}

static void push_num(lua_State *L, double v, int is_int)
{
    if (is_int) lua_pushinteger(L, (lua_Integer)v);
    else lua_pushnumber(L, v);
}

/* ---- slots: where the Lua strings and keys of C windows live ---- */

static int slot_take(lua_State *L, slot_vec *free_slots, int *n)
{
    if (free_slots->len) return free_slots->items[--free_slots->len];
    if (*n == INT32_MAX) luaL_error(L, "too many open windows");
    return ++*n;
}

static void slot_give(lua_State *L, int tab, slot_vec *free_slots, int slot)
{
    if (slot <= 0) return;
    lua_pushnil(L);
    lua_rawseti(L, tab, slot);
    /* (A slot that cannot be recycled for lack of memory is only not reused.) */
    (void)fs_vec_push(free_slots, slot);
}

/* fs_wkey_forget: the key and its windows go (release, hold over a held partition). */
typedef struct {
    lua_State *L;
    win_ud *u;
    int kbt, keyt;
} forget_ctx;

static void forget_key(void *data, fs_wkey *k)
{
    forget_ctx *f = data;
    for (size_t i = 0; i < k->wins.len; i++) slot_give(f->L, f->kbt, &f->u->free_kb, k->wins.items[i]->slot);
    slot_give(f->L, f->keyt, &f->u->free_key, k->slot);
}

static void drop_pend_of(win_ud *u, int32_t p)
{
    size_t j = 0;
    for (size_t i = 0; i < u->pend.len; i++)
        if (u->pend.items[i].p != p) u->pend.items[j++] = u->pend.items[i];
    u->pend.len = j;
}

/* Removes win (and its key when it was the last) and frees their slots. */
static void remove_window(lua_State *L, win_ud *u, fs_wpart *wp, fs_win *win, int kbt, int keyt)
{
    slot_give(L, kbt, &u->free_kb, win->slot);
    fs_wkey *k = fs_wpart_remove(wp, win);
    if (k) {
        slot_give(L, keyt, &u->free_key, k->slot);
        fs_wpart_drop_key(wp, k);
    }
}

/* Windows opened by an update that raised before confirming them are never
 * confirmed once they have closed: they go at the next close pass. */
static void purge_expired(lua_State *L, win_ud *u, int32_t p, fs_wpart *wp, double now, int kbt,
                          int keyt)
{
    size_t j = 0;
    for (size_t i = 0; i < u->pend.len; i++) {
        pend_t e = u->pend.items[i];
        if (e.p == p && e.win->start + u->w->size + u->w->expires < now) {
            remove_window(L, u, wp, e.win, kbt, keyt);
            continue;
        }
        u->pend.items[j++] = e;
    }
    u->pend.len = j;
}

/* ---- the closer's timer ---- */

static int64_t wall_ms(fs_rt *rt)
{
    return fs_rt_wall_ms(rt);
}

/* idle_close: the partition just had an event (or was taken): its quiet
 * time starts now, from its current stream time. */
static void quiet_from_now(win_ud *u, fs_rt *rt, fs_wpart *wp)
{
    if (!u->idle_ms || u->now_mode || !rt) return;
    wp->has_quiet = 1;
    wp->quiet_since = fs_loop_now(&rt->loop);
    wp->quiet_time = wp->stream_time;
}

/* Loop time at which the closer should look again, or INT64_MAX (never,
 * until an event or a new window says otherwise). */
static int64_t wake_at(win_ud *u, fs_rt *rt)
{
    fs_windows *w = u->w;
    int64_t now = fs_loop_now(&rt->loop), want = INT64_MAX;
    int64_t wall = u->now_mode ? wall_ms(rt) : 0;
    for (int32_t p = 0; p < w->nparts; p++) {
        fs_wpart *wp = fs_windows_part(w, p);
        if (!wp) continue;
        double due = fs_wpart_next_due(w, wp);
        if (!(due < INFINITY)) continue;
        if (u->now_mode) {
            /* The first millisecond at which the clock (in seconds) is past `due`. */
            double ms = floor(due * 1000.0) + 1.0;
            int64_t at = ms - (double)wall > 9e15 ? INT64_MAX / 2 : now + (int64_t)(ms - (double)wall);
            if (at < want) want = at;
        } else if (wp->has_time && wp->stream_time > due) {
            want = now;
        } else if (u->idle_ms && wp->has_time && wp->has_quiet) {
            /* Quiet for idle_ms, and stream time (quiet_time plus the time
             * since) past `due`: whichever comes later. */
            double ms = floor((due - wp->quiet_time) * 1000.0) + 1.0;
            if (ms < (double)u->idle_ms) ms = (double)u->idle_ms;
            int64_t at = ms > 9e15 ? INT64_MAX / 2 : wp->quiet_since + (int64_t)ms;
            if (at < want) want = at;
        }
    }
    if (want == INT64_MAX) return want;
    int64_t spaced = u->last_pass + u->interval_ms;
    return want > spaced ? want : spaced;
}

/* Something may be due earlier than the parked closer expects: re-arm it. */
static void notify(win_ud *u, fs_rt *rt)
{
    fs_co *co = u->waiter;
    if (!co || !rt || co->state != FS_CO_WAITING || co->wait != FS_WAIT_SLEEP) return;
    int64_t at = wake_at(u, rt);
    if (at == INT64_MAX) return;
    if (fs_timer_active(&co->timer) && co->timer.when <= at) return;
    int64_t now = fs_loop_now(&rt->loop);
    (void)fs_timer_start(&rt->loop, &co->timer, at > now ? at - now : 0);
}

static void wait_cancel(fs_co *co)
{
    win_ud *u = co->pending;
    co->pending = NULL;
    if (u && u->waiter == co) u->waiter = NULL;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    win_ud *u = (win_ud *)ctx;
    fs_co *co = fs_co_current(L);
    if (co) {
        co->pending = NULL;
        co->cancel = NULL;
    }
    if (u->waiter == co) u->waiter = NULL;
    fs_rt *rt = co ? co->rt : NULL;
    if (rt) u->last_pass = fs_loop_now(&rt->loop);
    return 0;
}

/* idx:wait(): parks the calling task until a window may be due (its end +
 * expires passed on the clock, or stream time past it and no event closed
 * it), at most once per interval. */
static int l_wait(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_rt *rt = ud_rt(L, 1);
    if (!rt) return luaL_error(L, "window index: wait needs a bound runtime");
    fs_co *co = fs_sched_yieldable(L, "window index: wait must be called from a task");
    if (u->waiter && u->waiter != co) return luaL_error(L, "window index: another task waits on it");
    u->waiter = co;
    fs_sched_wait(co, FS_WAIT_SLEEP, u, wait_cancel);
    int64_t at = wake_at(u, rt), now = fs_loop_now(&rt->loop);
    if (at != INT64_MAX && fs_timer_start(&rt->loop, &co->timer, at > now ? at - now : 0))
        return luaL_error(L, "out of memory");
    return lua_yieldk(L, 0, (lua_KContext)u, wait_k);
}

/* ---- building ---- */

/* core.windows{partitions=, kind=, size=, step=, expires=, combine=, now=, interval=,
 * idle_close=}; kind "session": size is the gap, windows have their own ends. */
static int l_windows_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "partitions");
    lua_Integer parts = luaL_checkinteger(L, -1);
    lua_getfield(L, 1, "kind");
    const char *kind = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "size");
    double size = luaL_checknumber(L, -1);
    int size_int = lua_isinteger(L, -1);
    lua_getfield(L, 1, "step");
    double step = luaL_checknumber(L, -1);
    int step_int = lua_isinteger(L, -1);
    lua_getfield(L, 1, "expires");
    double expires = luaL_checknumber(L, -1);
    lua_getfield(L, 1, "combine");
    int combine = lua_toboolean(L, -1);
    lua_getfield(L, 1, "now");
    int now_mode = lua_toboolean(L, -1);
    lua_getfield(L, 1, "interval");
    double interval = luaL_optnumber(L, -1, 1.0);
    lua_getfield(L, 1, "idle_close");
    double idle = luaL_optnumber(L, -1, 0.0);
    lua_settop(L, 1);
    luaL_argcheck(L, parts >= 1 && parts <= INT32_MAX, 1, "partitions out of range");

    win_ud *u = lua_newuserdatauv(L, sizeof *u, 3);
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, WINDOWS_MT);
    u->kind = combine && strcmp(kind, "session") != 0 ? KIND_COMBINE
              : strcmp(kind, "sliding") == 0           ? KIND_SLIDING
              : strcmp(kind, "session") == 0           ? KIND_SESSION
                                                       : KIND_HOPPING;
    u->idle_ms = idle > 0 && !now_mode ? (int64_t)llround(idle * 1000) : 0;
    u->now_mode = now_mode;
    u->size_int = size_int;
    u->step_int = step_int;
    u->interval_ms = interval > 0 ? (int64_t)llround(interval * 1000) : 0;
    u->w = fs_windows_new((int32_t)parts, size, step, expires, u->kind == KIND_COMBINE);
    if (!u->w) return luaL_error(L, "out of memory");
    lua_newtable(L);
    lua_setiuservalue(L, -2, UV_KB);
    lua_newtable(L);
    lua_setiuservalue(L, -2, UV_KEYS);
    return 1;
}

/* idx:bind(rt): the runtime whose clock and loop the index uses. */
static int l_bind(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_rt *rt = fs_lua_check_rt(L, 2);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, UV_RT);
    u->last_pass = fs_loop_now(&rt->loop);
    return 0;
}

static int l_gc(lua_State *L)
{
    win_ud *u = luaL_checkudata(L, 1, WINDOWS_MT);
    fs_windows_free(u->w, NULL, NULL);
    u->w = NULL;
    fs_vec_free(&u->free_kb);
    fs_vec_free(&u->free_key);
    fs_vec_free(&u->pend);
    fs_vec_free(&u->cand);
    fs_buf_free(&u->key);
    fs_buf_free(&u->kb);
    return 0;
}

/* Parses a number written by the JSON encoder: integer when it has no
 * fraction or exponent (as fs_json decodes it). 0 when it is not one. */
static int parse_num(const char *s, size_t n, double *v, int *is_int)
{
    char tmp[64];
    if (n == 0 || n >= sizeof tmp) return 0;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    *v = strtod(tmp, &end);
    if (end != tmp + n || !isfinite(*v)) return 0;
    *is_int = strpbrk(tmp, ".eE") == NULL && fabs(*v) < 9.2e18;
    return 1;
}

static fs_wkey *key_for(lua_State *L, win_ud *u, fs_wpart *wp, const char *json, size_t len,
                        int value_idx, int keyt)
{
    int oom;
    fs_wkey *k = fs_wpart_key(wp, json, len, fs_windows_hash(json, len), 1, &oom);
    if (!k) luaL_error(L, "out of memory");
    if (k->slot < 0) {
        k->slot = slot_take(L, &u->free_key, &u->nkey);
        lua_pushvalue(L, value_idx);
        lua_rawseti(L, keyt, k->slot);
    }
    return k;
}

/* Makes the entry key [key, start] of a window in u->kb (the key's JSON in u->key). */
static void make_kb(lua_State *L, win_ud *u, double start, int start_int)
{
    char err[128];
    fs_buf_reset(&u->kb);
    int bad = fs_buf_addc(&u->kb, '[') || fs_buf_add(&u->kb, u->key.data, u->key.len) ||
              fs_buf_addc(&u->kb, ',');
    if (!bad) {
        push_num(L, start, start_int);
        bad = fs_json_encode(L, -1, &u->kb, err, sizeof err);
        lua_pop(L, 1);
    }
    if (bad || fs_buf_addc(&u->kb, ']')) luaL_error(L, "window index: cannot write a window's key");
}

/* Opens a window of k at k->wins[pos] with its entry key in u->kb. */
static fs_win *open_window(lua_State *L, win_ud *u, fs_wpart *wp, fs_wkey *k, size_t pos, double start,
                           int start_int, double end, int end_int, int kbt, int32_t p)
{
    fs_win *win = fs_wpart_open(wp, k, pos, start, start_int, end, end_int, u->kb.data, u->kb.len);
    if (!win || fs_vec_reserve(&u->pend, u->pend.len + 1)) luaL_error(L, "out of memory");
    win->slot = slot_take(L, &u->free_kb, &u->nkb);
    lua_pushlstring(L, u->kb.data, u->kb.len);
    lua_rawseti(L, kbt, win->slot);
    u->pend.items[u->pend.len++] = (pend_t){win, p};
    return win;
}

/* idx:hold(p [, keys [, stream_time [, closed_through [, ends]]]]): an
 * empty index for partition p, filled from the partition's stored entry keys
 * (from rt:table_scan) and its stream time and last close pass (decoded by
 * the table). The runtime's own entries (keys starting with NUL) are skipped.
 * Session windows take their end from `ends` (entry key -> end), or, when
 * it has none for them, start + gap. */
static int l_hold(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    lua_settop(L, 6);
    lua_getiuservalue(L, 1, UV_KB);   /* 7 */
    lua_getiuservalue(L, 1, UV_KEYS); /* 8 */
    forget_ctx f = {L, u, 7, 8};
    drop_pend_of(u, p);
    if (fs_windows_hold(u->w, p, forget_key, &f)) return luaL_error(L, "partition %d out of range", (int)p);
    fs_windows *w = u->w;
    fs_wpart *wp = fs_windows_part(w, p);
    if (lua_isnumber(L, 4)) {
        wp->stream_time = lua_tonumber(L, 4);
        wp->has_time = 1;
        quiet_from_now(u, ud_rt(L, 1), wp);
    }
    if (lua_isnumber(L, 5)) {
        wp->closed_through = lua_tonumber(L, 5);
        wp->has_closed_through = 1;
    }
    int has_ends = lua_istable(L, 6);
    lua_Integer n = lua_istable(L, 3) ? luaL_len(L, 3) : 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 3, i); /* 9 */
        size_t kl;
        const char *kb = lua_tolstring(L, 9, &kl);
        double num;
        int is_int;
        /* [key, start]: the start is the text after the last comma. */
        const char *comma = NULL;
        for (size_t j = kb && kl > 1 ? kl - 1 : 0; j > 0; j--)
            if (kb[j] == ',') {
                comma = kb + j;
                break;
            }
        if (!comma || kb[0] != '[' || kb[kl - 1] != ']' ||
            !parse_num(comma + 1, (size_t)(kb + kl - 1 - comma - 1), &num, &is_int)) {
            lua_settop(L, 8);
            continue;
        }
        const char *kj = kb + 1;
        size_t kjl = (size_t)(comma - kj);
        char err[160];
        if (fs_json_decode(L, kj, kjl, err, sizeof err)) { /* not a window's entry */
            lua_settop(L, 8);
            continue;
        }
        fs_wkey *k = key_for(L, u, wp, kj, kjl, 10, 8);
        size_t pos = fs_wkey_lower(k, num);
        if (pos < k->wins.len && k->wins.items[pos]->start == num) {
            lua_settop(L, 8);
            continue;
        }
        double len = u->kind == KIND_COMBINE ? w->step : w->size;
        int len_int = u->kind == KIND_COMBINE ? u->step_int : u->size_int;
        double end = num + len;
        int end_int = is_int && len_int;
        if (u->kind == KIND_SESSION && has_ends) {
            lua_pushvalue(L, 9);
            if (lua_rawget(L, 6) == LUA_TNUMBER) {
                end = lua_tonumber(L, -1);
                end_int = lua_isinteger(L, -1);
            }
            lua_pop(L, 1);
        }
        fs_win *win = fs_wpart_open(wp, k, pos, num, is_int, end, end_int, kb, kl);
        if (!win) return luaL_error(L, "out of memory");
        win->slot = slot_take(L, &u->free_kb, &u->nkb);
        lua_pushvalue(L, 9);
        lua_rawseti(L, 7, win->slot);
        if (fs_wpart_confirm(w, wp, win)) return luaL_error(L, "out of memory");
        lua_settop(L, 8);
    }
    /* Windows due before the restart close without waiting for an event. */
    notify(u, ud_rt(L, 1));
    return 0;
}

static int l_release(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    lua_getiuservalue(L, 1, UV_KB);
    lua_getiuservalue(L, 1, UV_KEYS);
    forget_ctx f = {L, u, lua_gettop(L) - 1, lua_gettop(L)};
    drop_pend_of(u, p);
    fs_windows_release(u->w, p, forget_key, &f);
    return 0;
}

/* ---- per event ---- */

static int is_due(const win_ud *u, const fs_wpart *wp)
{
    return !u->now_mode && wp->has_time && wp->stream_time > fs_wpart_next_due(u->w, wp);
}

/* Puts window win (open or just opened) at out[i]; a new one also at fresh[i]. */
static void hand_out(lua_State *L, fs_win *win, lua_Integer i, int kbt, lua_Integer *nnew)
{
    lua_rawgeti(L, kbt, win->slot);
    lua_rawseti(L, 5, i);
    if (win->pending) {
        lua_pushlightuserdata(L, win);
        lua_rawseti(L, 6, i);
        ++*nnew;
    }
}

/* Finds or opens the window of k starting at s. */
static fs_win *window_at(lua_State *L, win_ud *u, fs_wpart *wp, fs_wkey **kp, double s, int s_int,
                         double len, int len_int, int kbt, int keyt, int32_t p)
{
    if (!*kp) *kp = key_for(L, u, wp, u->key.data, u->key.len, 3, keyt);
    fs_wkey *k = *kp;
    size_t pos = fs_wkey_lower(k, s);
    if (pos < k->wins.len && k->wins.items[pos]->start == s) return k->wins.items[pos];
    make_kb(L, u, s, s_int);
    return open_window(L, u, wp, k, pos, s, s_int, s + len, s_int && len_int, kbt, p);
}

/* idx:touch(p, key, at, out, fresh) -> n, nnew, late, due, advanced
 * The windows the event at time `at` updates, in the order to apply them:
 * their entry keys at out[1..n]; fresh[i] is set for those it opens, which
 * idx:confirm(p, fresh[i]) registers once their value is written. late: a
 * window of the event has closed; due: stream time passed a window's close;
 * advanced: the event moved stream time (to `at`). nil: p is not held. */
static int l_touch(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    double at = luaL_checknumber(L, 4);
    int at_int = lua_isinteger(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checktype(L, 6, LUA_TTABLE);
    lua_settop(L, 6);
    fs_windows *w = u->w;
    fs_wpart *wp = fs_windows_part(w, p);
    if (!wp) return 0;
    lua_getiuservalue(L, 1, UV_KB);   /* 7 */
    lua_getiuservalue(L, 1, UV_KEYS); /* 8 */
    int advanced = 0;
    double now;
    if (u->now_mode) {
        fs_rt *rt = ud_rt(L, 1);
        if (!rt) return luaL_error(L, "window index: the runtime is closed");
        now = (double)wall_ms(rt) / 1000.0;
    } else {
        if (!wp->has_time || at > wp->stream_time) {
            wp->stream_time = at;
            wp->has_time = 1;
            advanced = 1;
        }
        now = wp->stream_time;
        if (u->idle_ms) quiet_from_now(u, ud_rt(L, 1), wp);
    }
    char err[160];
    fs_buf_reset(&u->key);
    if (fs_json_encode(L, 3, &u->key, err, sizeof err)) return luaL_error(L, "%s", err);
    int oom;
    fs_wkey *k = fs_wpart_key(wp, u->key.data, u->key.len, fs_windows_hash(u->key.data, u->key.len), 0, &oom);
    double size = w->size, step = w->step, expires = w->expires;
    lua_Integer n = 0, nnew = 0;
    int late = 0;
    if (u->kind == KIND_SLIDING) {
        /* The key's open windows containing `at`, and one starting at `at`;
         * oldest first. */
        u->cand.len = 0;
        int own = 0;
        if (k) {
            for (size_t i = 0; i < k->wins.len; i++) {
                fs_win *x = k->wins.items[i];
                if (x->start > at) break;
                if (x->start == at) own = 1;
                if (at < x->start + size && fs_vec_push(&u->cand, x)) return luaL_error(L, "out of memory");
            }
        }
        if (!own) { /* the newest start: after every candidate */
            if (fs_vec_push(&u->cand, NULL)) return luaL_error(L, "out of memory");
        }
        for (size_t i = 0; i < u->cand.len; i++) {
            fs_win *x = u->cand.items[i];
            double s = x ? x->start : at;
            if (now > s + size + expires) {
                late = 1;
                continue;
            }
            if (!x) x = window_at(L, u, wp, &k, at, at_int, size, u->size_int, 7, 8, p);
            hand_out(L, x, ++n, 7, &nnew);
        }
    } else {
        double newest = floor(at / step) * step;
        double oldest = (floor((at - size) / step) + 1) * step;
        if (u->kind == KIND_COMBINE) {
            if (now > newest + size + expires) {
                late = 1;
            } else {
                if (now > oldest + size + expires) late = 1;
                fs_win *x = window_at(L, u, wp, &k, newest, u->step_int, step, u->step_int, 7, 8, p);
                hand_out(L, x, ++n, 7, &nnew);
            }
        } else {
            /* Windows start at the multiples of step in (at - size, at]; the
             * ones before `first` have closed. Same arithmetic as Lua's
             * `for s = newest, first, -step`. */
            double c = ceil((now - size - expires) / step) * step;
            double first = oldest < c ? c : oldest;
            for (double s = newest; s >= first; s = s + (-step)) {
                fs_win *x = window_at(L, u, wp, &k, s, u->step_int, size, u->size_int, 7, 8, p);
                hand_out(L, x, ++n, 7, &nnew);
            }
            if (first > oldest) late = 1;
        }
    }
    int due = is_due(u, wp);
    /* The agent closes what is due right after this update; should it not
     * (a close pass of the partition is under way elsewhere, or dies), the
     * parked closer comes around. */
    if (due) notify(u, ud_rt(L, 1));
    lua_pushinteger(L, n);
    lua_pushinteger(L, nnew);
    lua_pushboolean(L, late);
    lua_pushboolean(L, due);
    lua_pushboolean(L, advanced);
    return 5;
}

/* idx:confirm(p, fresh_i) -> due: the window's value is written; it closes in
 * its turn from now on. */
static int l_confirm(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    luaL_checktype(L, 3, LUA_TLIGHTUSERDATA);
    fs_win *win = lua_touserdata(L, 3);
    fs_wpart *wp = fs_windows_part(u->w, p);
    if (!wp) return 0;
    for (size_t i = 0; i < u->pend.len; i++) {
        if (u->pend.items[i].win != win || u->pend.items[i].p != p) continue;
        u->pend.items[i] = u->pend.items[--u->pend.len];
        if (fs_wpart_confirm(u->w, wp, win)) return luaL_error(L, "out of memory");
        /* A parked closer may wait for nothing: this window can close on the clock. */
        if (u->now_mode || u->idle_ms) notify(u, ud_rt(L, 1));
        break;
    }
    int due = is_due(u, wp);
    if (due) notify(u, ud_rt(L, 1));
    lua_pushboolean(L, due);
    return 1;
}

/* ---- closing ---- */

/* idx:times(p) -> stream time, time of the last combine pass (nil when none) */
static int l_times(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    if (!wp) return 0;
    if (wp->has_time) lua_pushnumber(L, wp->stream_time);
    else lua_pushnil(L);
    if (wp->has_closed_through) lua_pushnumber(L, wp->closed_through);
    else lua_pushnil(L);
    return 2;
}

/* idx:pop(p, now) -> entry key, key, start, end of the window that closes
 * next if it is due at `now` (end + expires < now), taken out of the index;
 * nothing otherwise. Windows close by end, then by entry key. */
static int l_pop(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    double now = luaL_checknumber(L, 3);
    lua_settop(L, 3);
    fs_wpart *wp = fs_windows_part(u->w, p);
    if (!wp) return 0;
    lua_getiuservalue(L, 1, UV_KB);   /* 4 */
    lua_getiuservalue(L, 1, UV_KEYS); /* 5 */
    if (u->pend.len) purge_expired(L, u, p, wp, now, 4, 5);
    fs_win *win = fs_wpart_due_window(u->w, wp, now);
    if (!win) return 0;
    lua_rawgeti(L, 4, win->slot);
    lua_rawgeti(L, 5, win->key->slot);
    push_num(L, win->start, win->start_int);
    push_num(L, win->end, win->end_int);
    remove_window(L, u, wp, win, 4, 5);
    return 4;
}

static int cmp_keys(const void *a, const void *b)
{
    const fs_wkey *x = *(fs_wkey *const *)a, *y = *(fs_wkey *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->json, y->json, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* idx:slice_keys(p) -> {key JSON...}, {key...}: combine tables' keys with
 * slices, ordered by their JSON text. */
static int l_slice_keys(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    lua_settop(L, 2);
    lua_getiuservalue(L, 1, UV_KEYS); /* 3 */
    size_t n = wp ? wp->nkeys : 0, m = 0;
    fs_wkey **ks = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ks, 0); /* 4, freed by the GC */
    for (size_t b = 0; wp && b < wp->nbuckets; b++)
        for (fs_wkey *k = wp->buckets[b]; k; k = k->next) ks[m++] = k;
    qsort(ks, m, sizeof *ks, cmp_keys);
    lua_createtable(L, (int)m, 0);
    lua_createtable(L, (int)m, 0);
    for (size_t i = 0; i < m; i++) {
        lua_pushlstring(L, ks[i]->json, ks[i]->len);
        lua_rawseti(L, -3, (lua_Integer)i + 1);
        lua_rawgeti(L, 3, ks[i]->slot);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 2;
}

static fs_wkey *key_by_json(lua_State *L, fs_wpart *wp, int idx)
{
    size_t len;
    const char *json = luaL_checklstring(L, idx, &len);
    int oom;
    return fs_wpart_key(wp, json, len, fs_windows_hash(json, len), 0, &oom);
}

/* idx:span(p, key_json) -> start of the key's first and last slice, or nothing. */
static int l_span(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    fs_wkey *k = wp ? key_by_json(L, wp, 3) : NULL;
    if (!k || !k->wins.len) return 0;
    fs_win *a = k->wins.items[0], *b = k->wins.items[k->wins.len - 1];
    push_num(L, a->start, a->start_int);
    push_num(L, b->start, b->start_int);
    return 2;
}

/* idx:drop(p, key_json, gone, out) -> n: the key's slices starting before
 * `gone` leave the index; the entry keys of those written are out[1..n]. */
static int l_drop(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    double gone = luaL_checknumber(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    lua_settop(L, 5);
    fs_wpart *wp = fs_windows_part(u->w, p);
    fs_wkey *k = wp ? key_by_json(L, wp, 3) : NULL;
    lua_Integer n = 0;
    if (!k) {
        lua_pushinteger(L, 0);
        return 1;
    }
    lua_getiuservalue(L, 1, UV_KB);   /* 6 */
    lua_getiuservalue(L, 1, UV_KEYS); /* 7 */
    while (k && k->wins.len && k->wins.items[0]->start < gone) {
        fs_win *win = k->wins.items[0];
        if (win->pending) { /* never written: nothing to delete */
            for (size_t i = 0; i < u->pend.len; i++)
                if (u->pend.items[i].win == win) {
                    u->pend.items[i] = u->pend.items[--u->pend.len];
                    break;
                }
        } else {
            lua_rawgeti(L, 6, win->slot);
            lua_rawseti(L, 5, ++n);
        }
        int last = k->wins.len == 1;
        remove_window(L, u, wp, win, 6, 7);
        if (last) k = NULL;
    }
    lua_pushinteger(L, n);
    return 1;
}

/* idx:closed_through(p, now): a combine close pass at `now` is over. */
static int l_closed_through(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    double now = luaL_checknumber(L, 3);
    if (wp) fs_wpart_closed_through(u->w, wp, now);
    return 0;
}

/* idx:idle_advance(p) -> stream time: with idle_close, a partition that has
 * had no event for that long moves its stream time with the clock (the
 * stream time of its last event plus the time since); nothing when it does
 * not move. */
static int l_idle_advance(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    fs_rt *rt = ud_rt(L, 1);
    if (!wp || !rt || !u->idle_ms || !wp->has_time || !wp->has_quiet) return 0;
    int64_t quiet = fs_loop_now(&rt->loop) - wp->quiet_since;
    if (quiet < u->idle_ms) return 0;
    double t = wp->quiet_time + (double)quiet / 1000.0;
    if (!(t > wp->stream_time)) return 0;
    wp->stream_time = t;
    lua_pushnumber(L, t);
    return 1;
}

/* ---- session windows ----
 * A session is one window per run of a key's events closer than the gap
 * (size): [first event, last event + gap). lua/fstream/session.lua decides
 * merges; these calls find, move and drop sessions. Sessions are confirmed
 * as soon as they are put (after their value is written). */

/* The key (JSON of the value at idx) in partition wp, or NULL. */
static fs_wkey *find_key(lua_State *L, win_ud *u, fs_wpart *wp, int idx)
{
    char err[160];
    fs_buf_reset(&u->key);
    if (fs_json_encode(L, idx, &u->key, err, sizeof err)) luaL_error(L, "%s", err);
    int oom;
    return fs_wpart_key(wp, u->key.data, u->key.len, fs_windows_hash(u->key.data, u->key.len), 0, &oom);
}

/* idx:session_touch(p, key, at, out) -> n, advanced, due: moves stream time
 * to `at` when later (due: past a window's close); out[3i-2], out[3i-1], out[3i] = entry key, start, end of
 * the n sessions of the key that an event at `at` joins (start - gap < at <
 * end), oldest first. nil: p is not held. */
static int l_session_touch(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    double at = luaL_checknumber(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    lua_settop(L, 5);
    fs_wpart *wp = fs_windows_part(u->w, p);
    if (!wp) return 0;
    int advanced = 0;
    if (!u->now_mode) {
        if (!wp->has_time || at > wp->stream_time) {
            wp->stream_time = at;
            wp->has_time = 1;
            advanced = 1;
        }
        if (u->idle_ms) quiet_from_now(u, ud_rt(L, 1), wp);
    }
    fs_wkey *k = find_key(L, u, wp, 3);
    lua_getiuservalue(L, 1, UV_KB); /* 6 */
    lua_Integer n = 0;
    double gap = u->w->size;
    for (size_t i = 0; k && i < k->wins.len; i++) {
        fs_win *x = k->wins.items[i];
        if (!(x->start - gap < at)) break;
        if (!(at < x->end)) continue;
        lua_rawgeti(L, 6, x->slot);
        lua_rawseti(L, 5, 3 * n + 1);
        push_num(L, x->start, x->start_int);
        lua_rawseti(L, 5, 3 * n + 2);
        push_num(L, x->end, x->end_int);
        lua_rawseti(L, 5, 3 * n + 3);
        n++;
    }
    int due = is_due(u, wp);
    if (due) notify(u, ud_rt(L, 1));
    lua_pushinteger(L, n);
    lua_pushboolean(L, advanced);
    lua_pushboolean(L, due);
    return 3;
}

/* idx:session_put(p, key, start, end) -> entry key, due: the key's session
 * starting at `start` now ends at `end` (opened when new). due: stream time
 * passed a window's close. */
static int l_session_put(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    double start = luaL_checknumber(L, 4), end = luaL_checknumber(L, 5);
    int start_int = lua_isinteger(L, 4), end_int = lua_isinteger(L, 5);
    lua_settop(L, 5);
    fs_wpart *wp = fs_windows_part(u->w, p);
    if (!wp) return 0;
    lua_getiuservalue(L, 1, UV_KB);   /* 6 */
    lua_getiuservalue(L, 1, UV_KEYS); /* 7 */
    char err[160];
    fs_buf_reset(&u->key);
    if (fs_json_encode(L, 3, &u->key, err, sizeof err)) return luaL_error(L, "%s", err);
    fs_wkey *k = key_for(L, u, wp, u->key.data, u->key.len, 3, 7);
    size_t pos = fs_wkey_lower(k, start);
    fs_win *win;
    if (pos < k->wins.len && k->wins.items[pos]->start == start) {
        win = k->wins.items[pos];
        fs_wpart_set_end(wp, win, end, end_int);
    } else {
        make_kb(L, u, start, start_int);
        win = fs_wpart_open(wp, k, pos, start, start_int, end, end_int, u->kb.data, u->kb.len);
        if (!win) return luaL_error(L, "out of memory");
        win->slot = slot_take(L, &u->free_kb, &u->nkb);
        lua_pushlstring(L, u->kb.data, u->kb.len);
        lua_rawseti(L, 6, win->slot);
        if (fs_wpart_confirm(u->w, wp, win)) return luaL_error(L, "out of memory");
    }
    if (u->now_mode || u->idle_ms) notify(u, ud_rt(L, 1));
    int due = is_due(u, wp);
    if (due) notify(u, ud_rt(L, 1));
    lua_rawgeti(L, 6, win->slot);
    lua_pushboolean(L, due);
    return 2;
}

/* idx:session_remove(p, key, start): the key's session starting at `start`
 * leaves the index (merged into another). */
static int l_session_remove(lua_State *L)
{
    win_ud *u = check_ud(L);
    int32_t p = check_part(L, 2);
    double start = luaL_checknumber(L, 4);
    lua_settop(L, 4);
    fs_wpart *wp = fs_windows_part(u->w, p);
    if (!wp) return 0;
    fs_wkey *k = find_key(L, u, wp, 3);
    if (!k) return 0;
    size_t pos = fs_wkey_lower(k, start);
    if (pos >= k->wins.len || k->wins.items[pos]->start != start) return 0;
    lua_getiuservalue(L, 1, UV_KB);   /* 5 */
    lua_getiuservalue(L, 1, UV_KEYS); /* 6 */
    remove_window(L, u, wp, k->wins.items[pos], 5, 6);
    return 0;
}

/* ---- reads ---- */

/* idx:key_windows(p, key) -> {{kb, start, end}...}: the key's open windows
 * (slices), oldest first. */
static int l_key_windows(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    lua_settop(L, 3);
    lua_newtable(L); /* 4 */
    if (!wp) return 1;
    char err[160];
    fs_buf_reset(&u->key);
    if (fs_json_encode(L, 3, &u->key, err, sizeof err)) return luaL_error(L, "%s", err);
    int oom;
    fs_wkey *k = fs_wpart_key(wp, u->key.data, u->key.len, fs_windows_hash(u->key.data, u->key.len), 0, &oom);
    if (!k) return 1;
    lua_getiuservalue(L, 1, UV_KB); /* 5 */
    lua_Integer n = 0;
    for (size_t i = 0; i < k->wins.len; i++) {
        fs_win *win = k->wins.items[i];
        if (win->pending) continue;
        lua_createtable(L, 3, 0);
        lua_rawgeti(L, 5, win->slot);
        lua_rawseti(L, -2, 1);
        push_num(L, win->start, win->start_int);
        lua_rawseti(L, -2, 2);
        push_num(L, win->end, win->end_int);
        lua_rawseti(L, -2, 3);
        lua_rawseti(L, 4, ++n);
    }
    lua_settop(L, 4);
    return 1;
}

/* idx:sliding_starts(p, key, at) -> {start...}: the starts of the key's open
 * windows containing `at`, and `at` itself, ascending. */
static int l_sliding_starts(lua_State *L)
{
    win_ud *u = check_ud(L);
    fs_wpart *wp = fs_windows_part(u->w, check_part(L, 2));
    double at = luaL_checknumber(L, 4);
    int at_int = lua_isinteger(L, 4);
    lua_settop(L, 4);
    lua_newtable(L);
    fs_wkey *k = NULL;
    if (wp) {
        char err[160];
        fs_buf_reset(&u->key);
        if (fs_json_encode(L, 3, &u->key, err, sizeof err)) return luaL_error(L, "%s", err);
        int oom;
        k = fs_wpart_key(wp, u->key.data, u->key.len, fs_windows_hash(u->key.data, u->key.len), 0, &oom);
    }
    lua_Integer n = 0;
    int own = 0;
    for (size_t i = 0; k && i < k->wins.len; i++) {
        fs_win *x = k->wins.items[i];
        if (x->start > at) break;
        if (x->pending || !(at < x->start + u->w->size)) continue;
        if (x->start == at) own = 1;
        push_num(L, x->start, x->start_int);
        lua_rawseti(L, 5, ++n);
    }
    if (!own) {
        push_num(L, at, at_int);
        lua_rawseti(L, 5, ++n);
    }
    return 1;
}

/* idx:open_windows() -> how many windows (slices) are open in the held
 * partitions, opened by an unfinished update included (stats, benchmarks). */
static int l_open_windows(lua_State *L)
{
    win_ud *u = check_ud(L);
    lua_Integer n = 0;
    for (int32_t p = 0; p < u->w->nparts; p++)
        if (u->w->parts[p].held) n += (lua_Integer)u->w->parts[p].nwins;
    lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg windows_methods[] = {
    {"open_windows", l_open_windows},
    {"bind", l_bind},
    {"hold", l_hold},
    {"release", l_release},
    {"touch", l_touch},
    {"confirm", l_confirm},
    {"times", l_times},
    {"pop", l_pop},
    {"slice_keys", l_slice_keys},
    {"span", l_span},
    {"drop", l_drop},
    {"closed_through", l_closed_through},
    {"key_windows", l_key_windows},
    {"sliding_starts", l_sliding_starts},
    {"wait", l_wait},
    {"idle_advance", l_idle_advance},
    {"session_touch", l_session_touch},
    {"session_put", l_session_put},
    {"session_remove", l_session_remove},
    {NULL, NULL},
};

/* Registers the index's metatable and core.windows in the module table on
 * top of the stack. */
void fs_lua_open_windows(lua_State *L)
{
    luaL_newmetatable(L, WINDOWS_MT);
    luaL_newlib(L, windows_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_windows_new);
    lua_setfield(L, -2, "windows");
}
