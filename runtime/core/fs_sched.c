/* fs_sched: the scheduler (see fs_sched.h). Every agent instance, task and
 * timer callback is a Lua coroutine; resume_one() is the only caller of
 * lua_resume. A coroutine blocks only inside a host function that records its
 * one pending operation and ends with lua_yield; the event that ends the wait
 * calls fs_sched_ready and the loop resumes it later — handlers never resume
 * coroutines themselves. */
#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_call.h"
#include "fs_log.h"
#include "fs_mem.h"
#include "fs_sched.h"

/* Runaway coroutines. A count hook set on every coroutine would cost every
 * VM instruction a function call (Lua 5.4 traces each instruction while any
 * hook is set: twice the time of a tight loop), so the hook is armed only
 * when needed: each resume publishes when its coroutine becomes overdue; the
 * watch thread (fs_runtime.c) sees a run outlive that (or the stop deadline,
 * or a stop signal arrive) and sends the Lua thread SIGURG, whose handler
 * arms the hook (lua_sethook may be called from a signal handler). The hook
 * then raises, or disarms itself if the run ended or is not overdue. */
static fs_co *volatile running;        /* the coroutine inside lua_resume */
static lua_State *volatile innermost;  /* the Lua thread executing: ours or one it resumed */
static _Atomic int64_t run_due;        /* monotonic ms when the running coroutine is overdue; 0: none */
static atomic_uint run_seq;            /* bumped at every resume */
static pthread_t lua_thread;
static int have_lua_thread;

static int64_t coarse_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A coroutine that ran agent_timeout without yielding (or past the stop
 * deadline while the worker stops) is interrupted with an error. From then on
 * the hook fires at every instruction and raises the same error again, so a
 * pcall in the script cannot swallow it: the coroutine unwinds, and its
 * on_exit applies the agent's on_error policy. */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    fs_co *co = running;
    if (!co || co->state != FS_CO_RUNNING) { /* armed for a run that is over */
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    fs_sched *s = co->sched;
    if (!co->interrupted) {
        /* The loop cannot poll signals while this runs: the worker's hook does. */
        int stop_over = s->poll ? s->poll(s->poll_data) : 0;
        int64_t ran = coarse_ms() - co->run_since;
        if (ran < s->agent_timeout_ms && !stop_over) {
            lua_sethook(L, NULL, 0, 0);
            return;
        }
        const char *src = "?";
        int line = -1;
        if (lua_getinfo(L, "Sl", ar)) {
            src = ar->short_src;
            line = ar->currentline;
        }
        snprintf(co->kill_msg, sizeof co->kill_msg,
                 "%s:%d: interrupted after running %.1f s without yielding (%s)", src, line,
                 (double)ran / 1000.0,
                 stop_over ? "the worker is stopping and its deadline passed" : "agent_timeout");
        co->interrupted = 1;
        lua_sethook(co->L, count_hook, LUA_MASKCOUNT, 1);
        if (L != co->L) lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    }
    lua_pushstring(L, co->kill_msg);
    lua_error(L);
}

/* SIGURG handler, on the Lua thread. */
static void poke_handler(int sig)
{
    (void)sig;
    fs_co *co = running;
    lua_State *in = innermost;
    if (!co || co->state != FS_CO_RUNNING) return;
    lua_sethook(co->L, count_hook, LUA_MASKCOUNT, 1);
    if (in && in != co->L) lua_sethook(in, count_hook, LUA_MASKCOUNT, 1);
}

int fs_sched_watch_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = poke_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGURG, &sa, NULL)) return -1;
    lua_thread = pthread_self();
    have_lua_thread = 1;
    return 0;
}

void fs_sched_watch(int64_t now, int64_t stop_deadline, int poke_now)
{
    static unsigned poked_seq;
    static int64_t poked_at;
    int64_t due = atomic_load(&run_due);
    unsigned seq = atomic_load(&run_seq);
    if (!have_lua_thread || !due) return;
    if (!poke_now && now < due && !(stop_deadline && now >= stop_deadline)) return;
    /* Once per run, and again every second in case the hook found it not due. */
    if (!poke_now && seq == poked_seq && now - poked_at < 1000) return;
    poked_seq = seq;
    poked_at = now;
    pthread_kill(lua_thread, SIGURG);
}

int64_t fs_sched_clock_ms(void)
{
    return coarse_ms();
}

/* coroutine.resume and coroutine.wrap, wrapped so that `innermost` names the
 * thread that executes: a loop inside a coroutine that an agent resumes is
 * found there. Each calls the original function it holds as upvalue 1. */
static int tracked_call(lua_State *L, lua_State *co)
{
    lua_State *outer = innermost;
    if (co) innermost = co;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    /* Raw: the error object is raised again as it came (a guard, not a handler). */
    int st = fs_call(L, lua_gettop(L) - 1, LUA_MULTRET, FS_CALL_RAW);
    innermost = outer;
    if (st != LUA_OK) return lua_error(L);
    return lua_gettop(L);
}

static int tracked_resume(lua_State *L)
{
    return tracked_call(L, lua_tothread(L, 1));
}

static int tracked_wrapped(lua_State *L)
{
    return tracked_call(L, lua_tothread(L, lua_upvalueindex(2)));
}

static int tracked_wrap(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1); /* the original wrap's function */
    if (!lua_getupvalue(L, -1, 1) || !lua_isthread(L, -1)) { /* not the closure we know */
        lua_pop(L, 1);
        return 1;
    }
    lua_pushcclosure(L, tracked_wrapped, 2);
    return 1;
}

/* Replaces the function `name` of the table on top of the stack by `tracked`
 * holding the original (once: a second load of the module finds it done). */
static void track(lua_State *L, const char *name, lua_CFunction tracked)
{
    lua_getfield(L, -1, name);
    if (lua_tocfunction(L, -1) != tracked && lua_iscfunction(L, -1)) {
        lua_pushcclosure(L, tracked, 1);
        lua_setfield(L, -2, name);
    } else {
        lua_pop(L, 1);
    }
}

void fs_sched_track_coroutines(lua_State *L)
{
    lua_getglobal(L, "coroutine");
    if (lua_istable(L, -1)) {
        track(L, "resume", tracked_resume);
        track(L, "wrap", tracked_wrap);
    }
    lua_pop(L, 1);
}

/* What a released coroutine's thread points at: it tells a thread that ran
 * here and ended from one that never was ours (both are not current). */
static fs_co ended = {.state = FS_CO_DEAD};

int fs_co_ended(lua_State *thread)
{
    return *(fs_co **)lua_getextraspace(thread) == &ended;
}

fs_co *fs_co_current(lua_State *L)
{
    fs_co *co = *(fs_co **)lua_getextraspace(L);
    if (co && co->L == L && co->state == FS_CO_RUNNING) return co;
    return NULL;
}

fs_co *fs_sched_yieldable(lua_State *L, const char *outside)
{
    fs_co *co = fs_co_current(L);
    if (!co) luaL_error(L, "%s", outside);
    if (!lua_isyieldable(L))
        luaL_error(L, "cannot wait here: inside a metamethod or a C function that cannot yield");
    return co;
}

void fs_sched_wait(fs_co *co, int kind, void *pending, void (*cancel)(fs_co *co))
{
    co->state = FS_CO_WAITING;
    co->wait = kind;
    co->pending = pending;
    co->cancel = cancel;
}

void fs_sched_hold(fs_co *co, void *held, void (*release)(fs_co *co, void *held, int failed))
{
    co->held = release ? held : NULL;
    co->release = release;
}

void fs_sched_init(fs_sched *s, lua_State *L, fs_loop *loop)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->agent_timeout_ms = 10000;
    fs_sched_set_vm(s, L);
}

void fs_sched_set_vm(fs_sched *s, lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    s->L = lua_tothread(L, -1);
    lua_pop(L, 1);
}

void fs_sched_set_poll(fs_sched *s, int (*poll)(void *data), void *data)
{
    s->poll = poll;
    s->poll_data = data;
}

int fs_sched_busy(const fs_sched *s)
{
    return s->ready_head != NULL;
}

static const char *wait_what(const fs_co *co)
{
    if (co->state != FS_CO_WAITING) return co->state == FS_CO_READY ? "ready to run" : "running";
    switch (co->wait) {
    case FS_WAIT_SLEEP: return "in fstream.sleep";
    case FS_WAIT_TAKE: return "waiting for events";
    case FS_WAIT_DELIVERY: return "waiting for a delivery";
    case FS_WAIT_YIELD: return "yielded";
    case FS_WAIT_IO: return "waiting for I/O";
    case FS_WAIT_PARK: return "waiting for a reply";
    default: return "waiting";
    }
}

/* The innermost frame of T in the app's own code: fstream's modules are
 * loaded as "@lua/fstream/...", and C functions have no line. */
static int app_frame(lua_State *T, lua_Debug *ar)
{
    int found = 0;
    lua_Debug any;
    for (int level = 0; lua_getstack(T, level, ar); level++) {
        if (!lua_getinfo(T, "Sl", ar) || ar->currentline < 0) continue;
        if (strncmp(ar->source, "@lua/fstream/", 13) != 0) return 1;
        if (!found) any = *ar, found = 1;
    }
    if (found) *ar = any;
    return found;
}

void fs_sched_describe(const fs_sched *s, int kind, int max, char *buf, size_t n)
{
    if (!n) return;
    buf[0] = 0;
    size_t len = 0;
    int shown = 0, more = 0;
    for (const fs_co *co = s->live; co; co = co->next) {
        if (co->kind != kind || co->state == FS_CO_DEAD) continue;
        if (shown == max) {
            more++;
            continue;
        }
        lua_Debug ar;
        int w = app_frame(co->L, &ar)
                    ? snprintf(buf + len, n - len, "%s%s:%d %s", shown ? ", " : "", ar.short_src,
                               ar.currentline, wait_what(co))
                    : snprintf(buf + len, n - len, "%s%s", shown ? ", " : "", wait_what(co));
        if (w < 0 || (size_t)w >= n - len) return; /* full: what fits is written */
        len += (size_t)w;
        shown++;
    }
    if (more) snprintf(buf + len, n - len, " and %d more", more);
}

static void link_ready(fs_sched *s, fs_co *co)
{
    co->ready_next = NULL;
    if (s->ready_tail) s->ready_tail->ready_next = co;
    else s->ready_head = co;
    s->ready_tail = co;
}

static void unlink_ready(fs_sched *s, fs_co *co)
{
    fs_co *prev = NULL;
    for (fs_co *c = s->ready_head; c; prev = c, c = c->ready_next) {
        if (c != co) continue;
        if (prev) prev->ready_next = c->ready_next;
        else s->ready_head = c->ready_next;
        if (s->ready_tail == c) s->ready_tail = prev;
        return;
    }
}

void fs_sched_ready(fs_co *co)
{
    if (co->state == FS_CO_READY || co->state == FS_CO_DEAD) return;
    /* A sleep ends here; a take with a deadline keeps its timer armed: the
     * continuation decides whether enough arrived or the deadline passed. */
    if (co->state == FS_CO_WAITING && (co->wait == FS_WAIT_SLEEP || co->wait == FS_WAIT_PARK))
        fs_timer_stop(co->sched->loop, &co->timer);
    co->state = FS_CO_READY;
    link_ready(co->sched, co);
}

static void timer_fired(fs_timer *t)
{
    fs_sched_ready(t->data);
}

int fs_sched_spawn(fs_sched *s, struct fs_rt *rt, lua_State *L, int fn_idx, int exit_idx, int kind)
{
    fs_co *co = calloc(1, sizeof *co);
    if (!co) return luaL_error(L, "out of memory");
    co->sched = s;
    co->rt = rt;
    co->kind = kind;
    co->id = ++s->next_co_id;
    co->L = lua_newthread(L);
    co->ref = fs_ref(L);
    co->exit_ref = LUA_NOREF;
    if (exit_idx && !lua_isnoneornil(L, exit_idx)) {
        lua_pushvalue(L, exit_idx);
        co->exit_ref = fs_ref(L);
    }
    *(fs_co **)lua_getextraspace(co->L) = co;
    lua_pushvalue(L, fn_idx);
    lua_xmove(L, co->L, 1);
    co->timer.cb = timer_fired;
    co->timer.data = co;
    co->next = s->live;
    if (s->live) s->live->prev = co;
    s->live = co;
    s->nlive++;
    if (kind == FS_KIND_AGENT) s->nlive_agents++;
    co->state = FS_CO_WAITING;
    fs_sched_ready(co);
    return co->id;
}

/* The cleanup of a coroutine's record: releases what it holds, detaches its
 * pending operation, and frees it. failed: it died of an error that its
 * on_exit has handled. */
static void release(fs_co *co, int failed)
{
    fs_sched *s = co->sched;
    if (co->release) {
        void (*rel)(fs_co *, void *, int) = co->release;
        co->release = NULL;
        rel(co, co->held, failed);
        co->held = NULL;
    }
    if (co->state == FS_CO_READY) unlink_ready(s, co);
    fs_timer_stop(s->loop, &co->timer);
    if (co->cancel) {
        void (*cancel)(fs_co *) = co->cancel;
        co->cancel = NULL;
        cancel(co);
    }
    co->pending = NULL;
    co->state = FS_CO_DEAD;
    if (co->prev) co->prev->next = co->next;
    else s->live = co->next;
    if (co->next) co->next->prev = co->prev;
    s->nlive--;
    if (co->kind == FS_KIND_AGENT) s->nlive_agents--;
    *(fs_co **)lua_getextraspace(co->L) = &ended;
    lua_resetthread(co->L);
    fs_unref(s->L, co->ref);
    fs_unref(s->L, co->exit_ref);
    free(co);
}

/* Calls on_exit(ok, err, traceback) in the main state; its errors are logged. */
static void call_exit(fs_co *co, int ok)
{
    lua_State *L = co->sched->L;
    int exit_ref = co->exit_ref;
    co->exit_ref = LUA_NOREF;
    if (exit_ref == LUA_NOREF) {
        if (!ok) fs_error("%s", lua_tostring(L, -1));
        lua_pop(L, ok ? 0 : 2);
        return;
    }
    int nargs = ok ? 1 : 3;
    int base = lua_gettop(L) - (ok ? 0 : 2); /* below the error and traceback, if any */
    lua_rawgeti(L, LUA_REGISTRYINDEX, exit_ref);
    lua_pushboolean(L, ok);
    if (!ok) lua_rotate(L, -4, 2); /* move error and traceback after ok */
    if (fs_call(L, nargs, 0, FS_CALL_TRACEBACK))
        fs_error("on_exit handler failed: %s", lua_tostring(L, -1));
    lua_settop(L, base);
    fs_unref(L, exit_ref);
}

static void resume_one(fs_sched *s, fs_co *co)
{
    int nres = 0;
    int nargs = co->nargs;
    co->nargs = 0;
    co->state = FS_CO_RUNNING;
    /* The wait is over: its continuation owns what it waited on again. */
    co->wait = FS_WAIT_NONE;
    co->pending = NULL;
    co->cancel = NULL;
    fs_co *outer = s->current, *outer_running = running;
    lua_State *outer_innermost = innermost;
    int64_t outer_due = atomic_load(&run_due);
    s->current = co;
    co->run_since = coarse_ms();
    int64_t limit = s->agent_timeout_ms > 0 ? s->agent_timeout_ms : INT64_MAX / 4;
    atomic_store(&run_due, co->run_since + (limit < INT64_MAX / 4 ? limit : INT64_MAX / 4));
    atomic_fetch_add(&run_seq, 1);
    innermost = co->L;
    running = co;
    /* max_memory holds inside the coroutine only (fs_mem.h): what follows
     * (its traceback, on_exit) runs unprotected or must not fail. */
    int outer_guard = fs_mem_guard;
    fs_mem_guard = 1;
    int st = lua_resume(co->L, s->L, nargs, &nres);
    fs_mem_guard = outer_guard;
    running = outer_running;
    innermost = outer_innermost;
    atomic_store(&run_due, outer_due);
    s->current = outer;
    if (co->state == FS_CO_DEAD) return; /* killed itself while running: already freed */
    if (st == LUA_YIELD) {
        lua_pop(co->L, nres);
        /* A plain coroutine.yield() in agent code: treat it as "let others run". */
        if (co->state == FS_CO_RUNNING) {
            fs_sched_wait(co, FS_WAIT_YIELD, NULL, NULL);
            fs_sched_ready(co);
        }
        return;
    }
    lua_State *L = s->L;
    if (st == LUA_OK) {
        call_exit(co, 1);
    } else {
        /* The coroutine's stack is intact: take the traceback from where it failed. */
        lua_xmove(co->L, L, 1);
        fs_call_message(L, -1);
        luaL_traceback(L, co->L, NULL, 0);
        call_exit(co, 0);
    }
    if (co->state != FS_CO_DEAD) release(co, st != LUA_OK);
}

int fs_sched_run_ready(fs_sched *s)
{
    /* Only the coroutines ready now: one that readies itself again runs next round,
     * so the loop gets back to I/O between rounds. */
    fs_co *tail = s->ready_tail;
    int n = 0;
    while (s->ready_head) {
        fs_co *co = s->ready_head;
        s->ready_head = co->ready_next;
        if (!s->ready_head) s->ready_tail = NULL;
        co->ready_next = NULL;
        resume_one(s, co);
        n++;
        if (co == tail) break;
    }
    return n;
}

void fs_sched_kill(fs_co *co)
{
    if (co->state == FS_CO_RUNNING) {
        /* Can't free a running coroutine's thread under it: finish at next yield. */
        fs_unref(co->sched->L, co->exit_ref);
        co->exit_ref = LUA_NOREF;
        return;
    }
    fs_unref(co->sched->L, co->exit_ref);
    co->exit_ref = LUA_NOREF;
    release(co, 0);
}

void fs_sched_kill_all(fs_sched *s)
{
    fs_co *co = s->live;
    while (co) {
        fs_co *next = co->next;
        if (co->state != FS_CO_RUNNING) fs_sched_kill(co);
        co = next;
    }
}

int fs_sched_sleep(lua_State *L, fs_co *co, int64_t ms)
{
    if (fs_timer_start(co->sched->loop, &co->timer, ms)) return luaL_error(L, "out of memory");
    fs_sched_wait(co, FS_WAIT_SLEEP, NULL, NULL); /* release() stops the timer */
    return lua_yield(L, 0);
}

int fs_sched_park(lua_State *L, fs_co *co, int64_t ms)
{
    if (ms >= 0 && fs_timer_start(co->sched->loop, &co->timer, ms)) return luaL_error(L, "out of memory");
    fs_sched_wait(co, FS_WAIT_PARK, NULL, NULL); /* release() stops the timer */
    return lua_yield(L, 0);
}

void fs_sched_unpark_all(fs_sched *s)
{
    for (fs_co *co = s->live; co; co = co->next)
        if (co->state == FS_CO_WAITING && co->wait == FS_WAIT_PARK) fs_sched_ready(co);
}
