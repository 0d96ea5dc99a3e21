/* fs_lua_runtime: the runtime object ("fstream.Runtime") — creating it
 * (core.new) or taking it over after a reload (core.adopt), its lifecycle
 * (start, run, stop, close), agents and their streams, coroutines (spawn,
 * core.sleep), stats, values carried over reloads, and reload set-up. The
 * test runtime ("fstream.TestRuntime", fstream.testing) adds run_until_idle
 * and advance. */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "fs_assign.h"
#include "fs_call.h"
#include "fs_checkpoint.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_mem.h"
#include "fs_worker.h"
#include "fs_table.h"

/* Seconds (math.huge: never) to the count hook's milliseconds. */
static int64_t agent_timeout_ms(double s)
{
    if (!(s > 0)) return 10000;
    if (s >= 9e15) return INT64_MAX;
    return s * 1000 < 1 ? 1 : (int64_t)(s * 1000);
}

/* The scheduler's hook while a coroutine runs long: 1 when the worker is
 * stopping and its deadline passed (the coroutine is interrupted). */
static int sched_stop_over(void *data)
{
    fs_rt *rt = data;
    return rt->stopping && fs_loop_now(&rt->loop) > rt->stop_deadline;
}

/* A worker's: the loop cannot poll signals while the coroutine runs, so the
 * hook turns them into a stop request first. */
static int sched_poll(void *data)
{
    fs_rt_poll_signals(data);
    return sched_stop_over(data);
}

/* The app's max_memory (bytes, nil or 0: none) on L's state; raises when the
 * state already holds more, where every agent would fail at once. */
static void set_max_memory(lua_State *L, int opts_idx)
{
    lua_getfield(L, opts_idx, "max_memory");
    lua_Integer max = luaL_optinteger(L, -1, 0);
    lua_pop(L, 1);
    if (max < 0) luaL_error(L, "max_memory must be a positive number of bytes");
    if (max > 0) {
        lua_gc(L, LUA_GCCOLLECT);
        lua_Integer used = (lua_Integer)lua_gc(L, LUA_GCCOUNT) * 1024 + lua_gc(L, LUA_GCCOUNTB);
        if (used >= max)
            luaL_error(L, "max_memory (%I bytes) is below what the Lua state holds already (%I bytes)", max, used);
    }
    if (fs_mem_set_limit(L, (size_t)max)) luaL_error(L, "out of memory");
}

static int l_core_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "group");
    const char *group = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "broker");
    const char *broker = luaL_optstring(L, -1, "memory://");
    lua_getfield(L, 1, "test");
    int test = lua_toboolean(L, -1);
    lua_getfield(L, 1, "commit_interval");
    double ci = luaL_optnumber(L, -1, 2.8);
    lua_getfield(L, 1, "max_queued");
    lua_Integer maxq = luaL_optinteger(L, -1, 20000);
    lua_getfield(L, 1, "max_queued_bytes");
    lua_Integer maxqb = luaL_optinteger(L, -1, 64 << 20);
    /* fstream.testing's fake clock: the epoch time it starts at (default now). */
    lua_getfield(L, 1, "clock");
    int has_clock = !lua_isnil(L, -1);
    double clock = luaL_optnumber(L, -1, 0);
    lua_getfield(L, 1, "agent_timeout");
    double at = luaL_optnumber(L, -1, 10.0);
    lua_getfield(L, 1, "processing_guarantee");
    const char *pg = luaL_optstring(L, -1, "at_least_once");
    int eos = strcmp(pg, "exactly_once") == 0;
    if (!eos && strcmp(pg, "at_least_once") != 0)
        return luaL_error(L, "unknown processing guarantee '%s' (at_least_once or exactly_once)", pg);
    lua_getfield(L, 1, "data_dir");
    const char *data_dir = luaL_optstring(L, -1, ".");
    lua_getfield(L, 1, "test_hooks");
    int test_hooks = test || lua_toboolean(L, -1);
    lua_getfield(L, 1, "instance_id");
    const char *instance_id = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 1, "standby_replicas");
    lua_Integer standbys = luaL_optinteger(L, -1, 0);
    lua_getfield(L, 1, "partition_assignor");
    const char *assignor = luaL_optstring(L, -1, NULL);
    set_max_memory(L, 1);

    rt_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->rt = NULL;
    luaL_setmetatable(L, test_hooks ? RT_TEST_MT : RT_MT); /* test-only methods on the test one */
    fs_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return luaL_error(L, "out of memory");
    rt->tables_in_lua = test, rt->handle_signals = !test;
    rt->sfd = rt->tfd = rt->slot_fd = -1;
    rt->test_hooks = test_hooks;
    /* fstream.testing runs an exactly-once app like any other: in memory,
     * nothing is transactional (or durable) there. */
    rt->eos = eos && !test;
    rt->group = strdup(group);
    rt->data_dir = strdup(data_dir);
    if (!rt->group || !rt->data_dir) {
        free(rt->group);
        free(rt->data_dir);
        free(rt);
        return luaL_error(L, "out of memory");
    }
    rt->commit_interval_ms = (int64_t)(ci * 1000);
    if (rt->commit_interval_ms < 10) rt->commit_interval_ms = 10;
    rt->max_queued = maxq;
    rt->max_queued_bytes = maxqb;
    rt->standby_replicas = standbys > 0 ? (standbys > 64 ? 64 : (int)standbys) : 0;
    if (fs_loop_init(&rt->loop, test)) {
        free(rt->group);
        free(rt->data_dir);
        free(rt);
        return luaL_error(L, "epoll_create failed");
    }
    fs_sched_init(&rt->sched, L, &rt->loop);
    rt->L = rt->sched.L; /* the main VM, fixed until a reload hands it over */
    rt->sched.agent_timeout_ms = agent_timeout_ms(at);
    fs_sched_set_poll(&rt->sched, test ? sched_stop_over : sched_poll, rt);
    u->rt = rt;
    rt->ud = u;
    if (fs_watch_start()) fs_warn("cannot start the watch thread: agent_timeout is not enforced");
    if (test) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        rt->wall_offset_ms = has_clock ? (int64_t)llround(clock * 1000.0)
                                       : (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
        if (fs_rt_open_transport(rt, NULL, NULL, NULL, NULL, 0)) return luaL_error(L, "out of memory");
        return 1;
    }
    char err[512];
    if (fs_rt_open_transport(rt, broker, instance_id, assignor, err, sizeof err)) return luaL_error(L, "%s", err);
    return 1;
}

/* core.adopt(rt_pointer, {commit_interval=, max_queued=}): the runtime a
 * reloaded version takes over from the previous state (fs_reload.c). */
static int l_core_adopt(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TLIGHTUSERDATA);
    fs_rt *rt = lua_touserdata(L, 1);
    if (!rt->rebinding) return luaL_error(L, "no runtime is being handed over");
    rt_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->rt = rt;
    luaL_setmetatable(L, RT_MT);
    rt->ud = u;
    /* The reload hands the runtime to this state: its main VM from now on. */
    fs_sched_set_vm(&rt->sched, L);
    rt->L = rt->sched.L;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "commit_interval");
        if (lua_isnumber(L, -1)) {
            rt->commit_interval_ms = (int64_t)(lua_tonumber(L, -1) * 1000);
            if (rt->commit_interval_ms < 10) rt->commit_interval_ms = 10;
        }
        lua_getfield(L, 2, "max_queued");
        if (lua_isinteger(L, -1)) rt->max_queued = lua_tointeger(L, -1);
        lua_getfield(L, 2, "agent_timeout");
        if (lua_isnumber(L, -1)) rt->sched.agent_timeout_ms = agent_timeout_ms(lua_tonumber(L, -1));
        lua_getfield(L, 2, "max_queued_bytes");
        if (lua_isinteger(L, -1)) rt->max_queued_bytes = lua_tointeger(L, -1);
        lua_pop(L, 4);
        set_max_memory(L, 2); /* the new version's, on the new state */
    }
    return 1;
}

static void rt_free(fs_rt *rt)
{
    /* The layers above (reload, the HTTP client) registered what to do. */
    if (rt->on_free.fn) rt->on_free.fn(rt->on_free.data);
    fs_sched_kill_all(&rt->sched);
    fs_lua_replies_close(rt); /* its task is gone; the loop still holds its eventfd */
    if (rt->on_close.fn) rt->on_close.fn(rt->on_close.data);
    for (int i = 0; i < rt->nagents; i++) fs_agent_close(rt, rt->agents[i]);
    fs_worker_close(rt);
    fs_tables_close(rt);
    fs_unref(rt->L, rt->table_hook_ref);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        for (int j = 0; j < t->nparts; j++)
            fs_part_free(t->parts[j]);
        free(t->parts);
        free(t->subs);
        free(t->name);
        free(t);
    }
    /* Closed above: every event is already acknowledged. */
    for (int i = 0; i < rt->nagents; i++) fs_agent_free(rt, rt->agents[i], rt->L);
    for (int i = 0; i < rt->ncarry; i++) free(rt->carry[i].key);
    free(rt->carry);
    free(rt->topics);
    free(rt->agents);
    if (rt->sfd >= 0) close(rt->sfd);
    fs_loop_close(&rt->loop);
    fs_buf_free(&rt->kbuf);
    fs_buf_free(&rt->vbuf);
    free(rt->broker);
    free(rt->group);
    free(rt->data_dir);
    free(rt->txn_id);
    fs_vec_free(&rt->passes);
    if (rt->slot_fd >= 0) close(rt->slot_fd); /* lets go of the exactly-once slot */
    free(rt);
}

/* rt:close(), and __gc/__close of both runtime metatables. */
int fs_lua_rt_close(lua_State *L)
{
    rt_ud *u = luaL_testudata(L, 1, RT_MT);
    if (!u) u = luaL_checkudata(L, 1, RT_TEST_MT);
    if (u->rt) {
        fs_rt *rt = u->rt;
        u->rt = NULL;
        rt_free(rt);
        /* The limit was the app's: the state may outlive it (fstream.testing). */
        fs_mem_set_limit(L, 0);
    }
    return 0;
}

static int l_rt_agent(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *name = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    /* realloc's result is kept at once: the old block is gone once it moved. */
    fs_agent **as = realloc(rt->agents, (size_t)(rt->nagents + 1) * sizeof *as);
    if (!as) return luaL_error(L, "out of memory");
    rt->agents = as;
    fs_agent *a = calloc(1, sizeof *a);
    if (!a || !(a->name = strdup(name))) {
        free(a);
        return luaL_error(L, "out of memory");
    }
    a->rt = rt;
    a->id = rt->nagents;
    rt->agents[rt->nagents++] = a;
    lua_Integer n = luaL_len(L, 3);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 3, i);
        fs_topic *t = fs_lua_check_topic(L, rt, -1);
        lua_pop(L, 1);
        fs_agent **subs = realloc(t->subs, (size_t)(t->nsubs + 1) * sizeof *subs);
        if (!subs) return luaL_error(L, "out of memory");
        t->subs = subs;
        t->subs[t->nsubs++] = a;
    }
    lua_pushinteger(L, a->id + 1);
    return 1;
}

static fs_agent *check_agent(lua_State *L, fs_rt *rt, int idx)
{
    lua_Integer id = luaL_checkinteger(L, idx);
    if (id < 1 || id > rt->nagents) luaL_error(L, "unknown agent id %d", (int)id);
    return rt->agents[id - 1];
}

/* rt:agent_reads(agent id, topic id): the agent reads one more topic (a
 * pattern topic's new match); rt:resubscribe() then subscribes to it. */
static int l_rt_agent_reads(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_agent *a = check_agent(L, rt, 2);
    fs_topic *t = fs_lua_check_topic(L, rt, 3);
    for (int i = 0; i < t->nsubs; i++)
        if (t->subs[i] == a) return 0;
    fs_agent **subs = realloc(t->subs, (size_t)(t->nsubs + 1) * sizeof *subs);
    if (!subs) return luaL_error(L, "out of memory");
    t->subs = subs;
    t->subs[t->nsubs++] = a;
    return 0;
}

static int l_rt_stream(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_agent *a = check_agent(L, rt, 2);
    fs_stream **ss = realloc(a->streams, (size_t)(a->nstreams + 1) * sizeof *ss);
    if (!ss) return luaL_error(L, "out of memory");
    a->streams = ss;
    fs_stream *s = calloc(1, sizeof *s);
    if (!s) return luaL_error(L, "out of memory");
    s->agent = a;
    a->streams[a->nstreams++] = s;
    stream_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->s = s;
    u->rt = rt;
    u->owner = lua_touserdata(L, 1);
    luaL_setmetatable(L, STREAM_MT);
    lua_pushvalue(L, 1); /* the stream keeps its runtime alive */
    lua_setiuservalue(L, -2, 1);
    return 1;
}

/* rt:resubscribe(): after an agent added a topic and an agent at run time —
 * creates the topics that do not exist yet, opens their producer handles and
 * subscribes to what the agents now read. The group rebalances as for any
 * subscription change; events already taken stay with their agents until the
 * revocation lets them finish. Before the first subscription, or while a
 * reload hands the runtime over, the subscription that follows includes the
 * topics: they are only created here. Returns whether it subscribed. */
static int l_rt_resubscribe(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    int rc = rt->prestart || rt->rebinding ? fs_worker_open_topics(rt, err, sizeof err)
                                           : fs_worker_rebind(rt, err, sizeof err);
    if (rc < 0) return luaL_error(L, "%s", err);
    lua_pushboolean(L, rc > 0);
    return 1;
}

static int l_rt_close_agent(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_agent_close(rt, check_agent(L, rt, 2));
    return 0;
}

static int l_rt_spawn(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    const char *kind = luaL_optstring(L, 4, "task");
    lua_pushinteger(L, fs_sched_spawn(&rt->sched, rt, L, 2, 3,
                                      strcmp(kind, "agent") == 0 ? FS_KIND_AGENT : FS_KIND_TASK));
    return 1;
}

static int l_rt_start(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    char err[512];
    if (fs_worker_start(rt, err, sizeof err)) return luaL_error(L, "%s", err);
    return 0;
}

static int l_rt_run(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    if (rt->loop.fake_clock) return luaL_error(L, "use run_until_idle with the in-memory transport");
    lua_pushinteger(L, fs_rt_run(rt));
    return 1;
}

static int l_rt_run_until_idle(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    int rc = fs_rt_run_until_idle(rt, luaL_optinteger(L, 2, 1000000));
    if (rt->fatal) return luaL_error(L, "%s", rt->fatal_msg);
    if (rc > 0) return luaL_error(L, "the app did not become idle (an agent keeps sending to itself?)");
    return 0;
}

static int l_rt_advance(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    double secs = luaL_checknumber(L, 2);
    if (!rt->loop.fake_clock) return luaL_error(L, "advance needs the in-memory transport");
    int64_t target = fs_loop_now(&rt->loop) + (int64_t)llround(secs * 1000);
    /* Step from timer to timer so work triggered by one timer sees the time it fired at. */
    for (;;) {
        if (fs_rt_run_until_idle(rt, 1000000)) break;
        int64_t next = fs_loop_next_when(&rt->loop);
        if (next > target) break;
        fs_loop_set_fake_now(&rt->loop, next);
    }
    fs_loop_set_fake_now(&rt->loop, target);
    fs_rt_run_until_idle(rt, 1000000);
    if (rt->fatal) return luaL_error(L, "%s", rt->fatal_msg);
    return 0;
}

static int l_rt_stop(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_rt_request_stop(rt, luaL_optstring(L, 2, "requested"));
    return 0;
}

static int l_rt_stopping(lua_State *L)
{
    lua_pushboolean(L, fs_lua_check_rt(L, 1)->stopping);
    return 1;
}

static int l_rt_fatal(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_rt_fatal(rt, "%s", luaL_checkstring(L, 2));
    return 0;
}

static int l_rt_broker(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    lua_pushstring(L, rt->broker ? rt->broker : "");
    lua_pushboolean(L, rt->embedded);
    return 2;
}

/* rt:guarantee() -> "at_least_once" | "exactly_once": what the worker runs under. */
static int l_rt_guarantee(lua_State *L)
{
    lua_pushstring(L, fs_lua_check_rt(L, 1)->eos ? "exactly_once" : "at_least_once");
    return 1;
}

/* rt:window_pass(on): a window close pass starts (true) or ends in the running
 * coroutine; an exactly-once checkpoint does not cut through one. */
static int l_rt_window_pass(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_co *co = fs_co_current(L);
    if (fs_window_pass(rt, co ? co->id : 0, lua_toboolean(L, 2))) return luaL_error(L, "out of memory");
    return 0;
}

/* Test runtime: rt:test_hold(on) sets or releases the hold; rt:test_quiet()
 * says whether every agent is at an event boundary and no close pass runs. */
static int l_rt_test_hold(lua_State *L)
{
    fs_hold_agents(fs_lua_check_rt(L, 1), lua_toboolean(L, 2));
    return 0;
}

static int l_rt_test_quiet(lua_State *L)
{
    lua_pushboolean(L, fs_streams_quiet(fs_lua_check_rt(L, 1)));
    return 1;
}

/* Test runtime on a broker (FSTREAM_TEST_HOOKS): rt:test_reset(why). Under
 * exactly-once the open transaction is doomed: the next checkpoint fails,
 * aborts and resets — the path of a real failure. Under at-least-once the
 * reset alone is queued (uncommitted table writes are dropped, input resumes
 * at the committed offsets). */
static int l_rt_test_reset(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *why = luaL_optstring(L, 2, "a test asked for it");
    if (!rt->tp || rt->tp->holds_all || !rt->assign)
        return luaL_error(L, "test_reset needs a worker on a broker (not fstream.testing)");
    if (fs_ckpt_transactional(rt->ckpt)) {
        char msg[300];
        snprintf(msg, sizeof msg, "a test doomed the transaction: %s", why);
        fs_ckpt_doom(rt->ckpt, msg);
    } else {
        fs_assign_reset(rt->assign, "a test asked for a reset", why);
    }
    return 0;
}

static int l_rt_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)fs_rt_wall_ms(fs_lua_check_rt(L, 1)) / 1000.0);
    return 1;
}

/* stats.recovering[i] = {table=, partition=, done=, total=}: replays queued or
 * running (total is absent until the changelog's end is known). */
static void push_recovering(void *ud, const fs_table *t, int32_t p, int64_t done, int64_t total)
{
    lua_State *L = ud;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "table");
    lua_pushinteger(L, p);
    lua_setfield(L, -2, "partition");
    lua_pushinteger(L, done);
    lua_setfield(L, -2, "done");
    if (total >= 0) {
        lua_pushinteger(L, total);
        lua_setfield(L, -2, "total");
    }
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* stats.checkpoints = {bounds = {seconds...}, {occasion=, count=, failed=,
 * seconds_sum=, buckets = {n per bound, then above the last}}...}: every
 * occasion, in fs_ckpt_occasion order (absent without a transport). */
static void push_checkpoints(lua_State *L, fs_rt *rt)
{
    static const int64_t bounds[FS_CKPT_NBOUNDS] = FS_CKPT_BOUNDS;
    if (!rt->ckpt) return;
    lua_createtable(L, FS_CKPT_NOCCASIONS, 1);
    lua_createtable(L, FS_CKPT_NBOUNDS, 0);
    for (int b = 0; b < FS_CKPT_NBOUNDS; b++) {
        lua_pushnumber(L, (double)bounds[b] / 1e9);
        lua_rawseti(L, -2, b + 1);
    }
    lua_setfield(L, -2, "bounds");
    for (int o = 0; o < FS_CKPT_NOCCASIONS; o++) {
        const fs_ckpt_stats *st = fs_ckpt_stats_of(rt->ckpt, o);
        lua_createtable(L, 0, 5);
        lua_pushstring(L, fs_ckpt_occasion_name(o));
        lua_setfield(L, -2, "occasion");
        lua_pushinteger(L, st->count);
        lua_setfield(L, -2, "count");
        lua_pushinteger(L, st->failed);
        lua_setfield(L, -2, "failed");
        lua_pushnumber(L, (double)st->ns_sum / 1e9);
        lua_setfield(L, -2, "seconds_sum");
        lua_createtable(L, FS_CKPT_NBOUNDS + 1, 0);
        for (int b = 0; b <= FS_CKPT_NBOUNDS; b++) {
            lua_pushinteger(L, st->buckets[b]);
            lua_rawseti(L, -2, b + 1);
        }
        lua_setfield(L, -2, "buckets");
        lua_rawseti(L, -2, o + 1);
    }
    lua_setfield(L, -2, "checkpoints");
}

static int l_rt_stats(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    fs_sync_acks(rt);
    lua_newtable(L);
#define STAT(name, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, name))
    STAT("events_in", rt->events_in);
    STAT("events_acked", rt->events_acked);
    STAT("queued", rt->queued);
    STAT("queued_bytes", rt->queued_bytes);
    STAT("commits", rt->commits);
    STAT("decode_errors", rt->decode_errors);
    STAT("delivery_errors", rt->delivery_errors);
    STAT("coroutines", rt->sched.nlive);
    STAT("lua_refs", fs_refs_live());
    STAT("inflight", rt->inflight[0] + rt->inflight[1]);
    STAT("changelog_records", rt->changelog_records);
    STAT("lmdb_writes", rt->lmdb_writes);
    STAT("recovered_records", rt->recovered_records);
    STAT("txn_commits", rt->txn_commits);
    STAT("txn_aborts", rt->txn_aborts);
    STAT("resets", rt->resets);
    STAT("txn_last_ms", rt->txn_last_ms);
    STAT("commit_interval_ms", rt->commit_interval_ms);
    {
        size_t used, limit;
        unsigned long refused;
        if (fs_mem_get(L, &used, &limit, &refused)) {
            STAT("lua_memory", used);
            STAT("max_memory", limit);
            STAT("memory_refused", refused);
        }
        if (fs_mem_pool_get(L, &used)) STAT("lua_pool_bytes", used);
    }
#undef STAT
    lua_newtable(L);
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, t->produced);
        lua_setfield(L, -2, "produced");
        lua_pushinteger(L, t->consumed);
        lua_setfield(L, -2, "consumed");
        lua_newtable(L);
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!fs_part_consuming(p)) continue;
            lua_createtable(L, 0, 2);
            lua_pushinteger(L, fs_part_committable(p));
            lua_setfield(L, -2, "committable");
            lua_pushinteger(L, p->committed);
            lua_setfield(L, -2, "committed");
            lua_rawseti(L, -2, j);
        }
        lua_setfield(L, -2, "partitions");
        lua_setfield(L, -2, t->name);
    }
    lua_setfield(L, -2, "topics");
    lua_newtable(L);
    fs_tables_recovering(rt, push_recovering, L);
    lua_setfield(L, -2, "recovering");
    push_checkpoints(L, rt);
    return 1;
}

/* The value kept under key (created as 0 when create), or NULL. */
static double *carry_slot(fs_rt *rt, const char *key, int create)
{
    for (int i = 0; i < rt->ncarry; i++)
        if (strcmp(rt->carry[i].key, key) == 0) return &rt->carry[i].value;
    if (!create) return NULL;
    struct fs_carry *c = realloc(rt->carry, (size_t)(rt->ncarry + 1) * sizeof *c);
    if (!c) return NULL;
    rt->carry = c;
    c[rt->ncarry].key = strdup(key);
    if (!c[rt->ncarry].key) return NULL;
    c[rt->ncarry].value = 0;
    return &c[rt->ncarry++].value;
}

/* rt:carry(key [, value]): a number that outlives a reload (timers keep their
 * rhythm); returns the stored value or nil. */
static int l_rt_carry(lua_State *L)
{
    fs_rt *rt = fs_lua_check_rt(L, 1);
    const char *key = luaL_checkstring(L, 2);
    int set = !lua_isnoneornil(L, 3);
    double *v = carry_slot(rt, key, set);
    if (set) {
        if (!v) return luaL_error(L, "out of memory");
        *v = luaL_checknumber(L, 3);
        return 0;
    }
    if (v) lua_pushnumber(L, *v);
    else lua_pushnil(L);
    return 1;
}

/* ---- coroutines: core.sleep, core.current, core.ended ---- */

static int l_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    fs_co *co = fs_sched_yieldable(L, "fstream.sleep must be called from an agent, task or timer");
    return fs_sched_sleep(L, co, (int64_t)llround(secs * 1000));
}

static int l_current(lua_State *L)
{
    fs_co *co = fs_co_current(L);
    if (!co) return 0;
    lua_pushinteger(L, co->id);
    return 1;
}

/* core.ended(thread): true for a coroutine of the scheduler that has ended
 * (died of an error, returned, or was killed) — Lua state it left behind is stale. */
static int l_ended(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTHREAD);
    lua_pushboolean(L, fs_co_ended(lua_tothread(L, 1)));
    return 1;
}

const luaL_Reg fs_lua_runtime_methods[] = {
    {"agent", l_rt_agent},
    {"stream", l_rt_stream},
    {"resubscribe", l_rt_resubscribe},
    {"agent_reads", l_rt_agent_reads},
    {"close_agent", l_rt_close_agent},
    {"spawn", l_rt_spawn},
    {"start", l_rt_start},
    {"run", l_rt_run},
    {"stop", l_rt_stop},
    {"stopping", l_rt_stopping},
    {"fatal", l_rt_fatal},
    {"broker", l_rt_broker},
    {"now", l_rt_now},
    {"stats", l_rt_stats},
    {"guarantee", l_rt_guarantee},
    {"window_pass", l_rt_window_pass},
    {"carry", l_rt_carry},
    {"close", fs_lua_rt_close},
    {NULL, NULL},
};

/* Only a runtime made for fstream.testing (in-memory transport, fake clock). */
const luaL_Reg fs_lua_runtime_test_methods[] = {
    {"run_until_idle", l_rt_run_until_idle},
    {"advance", l_rt_advance},
    {"test_hold", l_rt_test_hold},
    {"test_quiet", l_rt_test_quiet},
    {"test_reset", l_rt_test_reset},
    {NULL, NULL},
};

const luaL_Reg fs_lua_runtime_funcs[] = {
    {"new", l_core_new},
    {"adopt", l_core_adopt},
    {"sleep", l_sleep},
    {"current", l_current},
    {"ended", l_ended},
    {NULL, NULL},
};
