/* fs_sched: the scheduler (core layer). Every agent instance, task and timer
 * callback is a Lua coroutine recorded in an fs_co; fs_sched.c's resume_one()
 * is the only caller of lua_resume.
 *
 * A coroutine blocks only inside a host function that
 *   1. gets its record with fs_sched_yieldable() (the one check that a yield
 *      is allowed here),
 *   2. records its ONE pending operation with fs_sched_wait(): what it waits
 *      on, and the cleanup that detaches it if the coroutine dies first,
 *   3. ends with lua_yield/lua_yieldk.
 * The event that ends the wait calls fs_sched_ready; handlers never resume
 * coroutines. The pending operation is the continuation's again (its cleanup
 * dropped) when the coroutine resumes.
 *
 * Besides its wait, a coroutine may hold something that must be released if
 * it dies (an agent's event in hand): fs_sched_hold registers that release,
 * and the scheduler calls it when it frees the record — it knows nothing of
 * streams.
 *
 * Knows nothing of Kafka, topics or the worker: what it needs from above is
 * registered (fs_sched_set_poll). */
#ifndef FS_SCHED_H
#define FS_SCHED_H

#include <lua.h>
#include <stdint.h>

#include "fs_loop.h"

enum { FS_CO_READY = 1, FS_CO_WAITING, FS_CO_RUNNING, FS_CO_DEAD };
/* What a waiting coroutine waits for (its pending operation's kind). */
enum { FS_WAIT_NONE = 0, FS_WAIT_SLEEP, FS_WAIT_TAKE, FS_WAIT_DELIVERY, FS_WAIT_YIELD, FS_WAIT_IO, FS_WAIT_PARK };
enum { FS_KIND_AGENT = 0, FS_KIND_TASK = 1 };

typedef struct fs_co fs_co;
typedef struct fs_sched fs_sched;
struct fs_rt;

/* A Lua coroutine run by the scheduler (agent instance, task, timer).
 * Allocated by fs_sched_spawn, freed by the scheduler when the coroutine ends
 * or is killed; nothing else may keep a pointer to it past the cleanups
 * below (a pending operation that points back at it is detached by `cancel`). */
struct fs_co {
    fs_sched *sched;
    struct fs_rt *rt; /* the runtime that spawned it: for host functions, opaque here */
    lua_State *L;     /* its thread, kept alive by `ref` */
    int ref;          /* registry ref keeping the thread alive */
    int exit_ref;     /* registry ref of on_exit(ok, err, traceback), or LUA_NOREF */
    int id;
    int kind;
    int state;
    int nargs; /* values already pushed on L for the next resume */
    /* The one pending operation while state == FS_CO_WAITING (or READY and
     * not resumed yet): its kind, what it waits on (owned by the subsystem
     * that armed it) and the cleanup that detaches it if the coroutine dies. */
    int wait;
    void *pending;
    void (*cancel)(fs_co *co);
    fs_timer timer; /* the scheduler's clock for sleep and a take's deadline */
    /* What the coroutine holds while it runs (an agent's event in hand),
     * released with `failed` (died of an error its on_exit has handled)
     * when the record is freed. */
    void *held;
    void (*release)(fs_co *co, void *held, int failed);
    fs_co *ready_next;  /* ready queue link */
    fs_co *prev, *next; /* list of live coroutines */
    int64_t run_since;  /* monotonic ms when the current resume began */
    int interrupted;    /* past agent_timeout: every hook call raises kill_msg */
    char kill_msg[320];
};

/* The scheduler's state; one per runtime, embedded in it. */
struct fs_sched {
    /* The main VM: the main thread of the Lua state that runs the app. Fixed
     * from fs_sched_init on; only a hot reload hands the scheduler to a new
     * state (fs_sched_set_vm), once every coroutine of the old one is gone.
     * on_exit handlers run in it and coroutines are resumed from it. */
    lua_State *L;
    fs_loop *loop; /* the runtime's; outlives the scheduler */
    fs_co *ready_head, *ready_tail;
    fs_co *live;
    int nlive, nlive_agents, next_co_id;
    fs_co *current;
    int64_t agent_timeout_ms; /* a coroutine running this long without yielding is interrupted */
    /* Registered by the worker: called from the count hook while a coroutine
     * runs long without yielding (the loop cannot run meanwhile). Turns
     * pending signals into a stop request; returns 1 when the worker is
     * stopping and its deadline passed (the coroutine is interrupted). */
    int (*poll)(void *data);
    void *poll_data;
};

void fs_sched_init(fs_sched *s, lua_State *L, fs_loop *loop);
/* The main VM, from any thread of its state (stored as the main thread). */
void fs_sched_set_vm(fs_sched *s, lua_State *L);
void fs_sched_set_poll(fs_sched *s, int (*poll)(void *data), void *data);

fs_co *fs_co_current(lua_State *L);
int fs_co_ended(lua_State *thread); /* a scheduler coroutine that has ended (died, killed) */
/* The coroutine running L if a host function may yield here. Raises the
 * message `outside` outside a scheduler coroutine, and says why across a
 * C-call boundary (a metamethod or C function that cannot yield). */
fs_co *fs_sched_yieldable(lua_State *L, const char *outside);
/* Records co's one pending operation (see above) and marks it waiting. */
void fs_sched_wait(fs_co *co, int kind, void *pending, void (*cancel)(fs_co *co));
/* Registers what co holds (one thing: a new hold replaces the previous one
 * without releasing it). NULL release: nothing held any more. */
void fs_sched_hold(fs_co *co, void *held, void (*release)(fs_co *co, void *held, int failed));

int fs_sched_spawn(fs_sched *s, struct fs_rt *rt, lua_State *L, int fn_idx, int exit_idx, int kind);
void fs_sched_ready(fs_co *co);
int fs_sched_run_ready(fs_sched *s); /* resumes every ready coroutine once; returns count */
int fs_sched_busy(const fs_sched *s); /* coroutines are ready to run */
/* Where the live coroutines of `kind` (FS_KIND_AGENT, FS_KIND_TASK) are, for a
 * log line: "app.lua:12 in fstream.sleep, app.lua:30 waiting for a delivery"
 * (the innermost frame outside fstream's own modules; at most `max` of them,
 * then "and N more"). Writes "" when there is none; always NUL-terminates. */
void fs_sched_describe(const fs_sched *s, int kind, int max, char *buf, size_t n);
void fs_sched_kill(fs_co *co);
void fs_sched_kill_all(fs_sched *s);
/* core.sleep: a pending sleep of ms on the coroutine's timer; ends in lua_yield. */
int fs_sched_sleep(lua_State *L, fs_co *co, int64_t ms);
/* A park (fs_lua_ask.c: asks waiting for replies, channel readers): waits,
 * with no pending data, until someone readies the coroutine, or its timer
 * (armed by the caller, ms >= 0; stopped with the wait like a sleep's) fires.
 * fs_sched_unpark_all readies every parked coroutine (the worker stops: what
 * they wait for will not come). */
int fs_sched_park(lua_State *L, fs_co *co, int64_t ms);
void fs_sched_unpark_all(fs_sched *s);

/* Runaway detection (see fs_sched.c). fs_sched_watch_init: on the thread that
 * runs Lua, once. fs_sched_watch: from the watch thread, every tick — pokes the
 * Lua thread when the running coroutine is overdue, past stop_deadline (0:
 * none), or at once with poke_now. fs_sched_track_coroutines: makes the
 * coroutine library of L report which thread executes. */
int fs_sched_watch_init(void);
void fs_sched_watch(int64_t now, int64_t stop_deadline, int poke_now);
int64_t fs_sched_clock_ms(void);
void fs_sched_track_coroutines(lua_State *L);

#endif
