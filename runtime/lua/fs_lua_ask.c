/* fs_lua_ask: what request/reply (fstream/ask.lua) and channels
 * (fstream/channel.lua) need from C — a coroutine that parks until another
 * coroutine wakes it or a deadline passes, and the reply address of the
 * event an agent holds.
 *
 * A park is a pending operation like a sleep (its timer is the coroutine's
 * own, stopped by fs_sched_ready), told apart by its `pending` tag so that
 * core.unpark never ends a plain sleep or any other wait. Nothing is owned
 * across the yield: the waker's data travels in Lua tables, the resume
 * carries only whether the coroutine was woken. */
#include <lauxlib.h>
#include <math.h>

#include "fs_lua.h"
#include "fs_sched.h"

static char park_tag; /* co->pending of a parked coroutine */

/* core.park([seconds]) -> true when core.unpark woke it, nothing when the
 * deadline passed first. Without seconds it waits until woken (or killed). */
static int l_park(lua_State *L)
{
    double secs = luaL_optnumber(L, 1, -1);
    fs_co *co = fs_sched_yieldable(L, "waiting for a reply or a channel must happen in an agent, task or timer");
    if (secs >= 0) {
        double ms = ceil(secs * 1000);
        if (ms > 1e12) ms = 1e12; /* far enough: never reached, and fits the timer */
        if (fs_timer_start(co->sched->loop, &co->timer, (int64_t)ms))
            return luaL_error(L, "out of memory");
    }
    fs_sched_wait(co, FS_WAIT_SLEEP, &park_tag, NULL); /* the scheduler stops the timer */
    return lua_yield(L, 0);
}

/* core.unpark(thread) -> whether the thread was parked and is now ready to
 * run (it then gets true from core.park). A thread that is not parked — a
 * coroutine that runs, sleeps, waits for events, or has ended — is left
 * alone: the waker's message stays where it put it. */
static int l_unpark(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_State *T = lua_tothread(L, 1);
    fs_co *co = *(fs_co **)lua_getextraspace(T);
    /* A thread that never was the scheduler's has NULL here; one it released
     * points at a dead record whose L is NULL. */
    if (!co || co->L != T || co->state != FS_CO_WAITING || co->wait != FS_WAIT_SLEEP ||
        co->pending != &park_tag) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (!lua_checkstack(T, 1)) return luaL_error(L, "out of memory");
    lua_pushboolean(T, 1);
    co->nargs = 1;
    fs_sched_ready(co);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.reply_to() -> reply topic, correlation id of the event the running
 * agent coroutine holds, or nothing (no event in hand, or not an ask). Asked
 * once per stream:yield; a message without headers costs one lookup. */
static int l_reply_to(lua_State *L)
{
    fs_event *e = fs_lua_event_in_hand(L);
    if (!e) return 0;
    rd_kafka_headers_t *h = fs_lua_event_headers(e);
    const void *to, *id;
    size_t tl, il;
    if (!h || rd_kafka_header_get_last(h, "fstream-reply-to", &to, &tl) || !to ||
        rd_kafka_header_get_last(h, "fstream-correlation-id", &id, &il) || !id)
        return 0;
    lua_pushlstring(L, to, tl);
    lua_pushlstring(L, id, il);
    return 2;
}

const luaL_Reg fs_lua_ask_funcs[] = {
    {"park", l_park},
    {"unpark", l_unpark},
    {"reply_to", l_reply_to},
    {NULL, NULL},
};
