/* fs_reload: swapping the app's Lua code while the worker runs (DESIGN §6).
 *
 * A change of the app's files (inotify, with --reload) or a SIGHUP loads the
 * script into a fresh lua_State, where fstream.cli's `prepare` runs its top
 * level and checks it against the running worker (same app id, same tables).
 * A version that fails is logged with file:line and dropped: the running one
 * never stopped. A version that loads replaces the running one in steps:
 *
 *   1. drain: stop fetching; a fence (as for a revocation) lets every agent
 *      finish the event it holds and drops what it has not started;
 *   2. checkpoint: table caches to the changelog and LMDB, outputs delivered,
 *      offsets committed;
 *   3. swap: the old coroutines and agents go, the old state is closed, and the
 *      new one adopts the runtime: topics, tables and agents are declared again
 *      (existing ones are kept, by name), the subscription follows what the new
 *      agents read, and every partition restarts at the offset after the last
 *      event the old version finished.
 *
 * C owns everything that outlives a version: the Kafka clients, the LMDB
 * stores, partitions and their offsets, and a few numbers the Lua side carries
 * over (timers' next due times). */
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "fs_worker.h"
#include "fs_mem.h"
#include "fs_reload.h"
#include "fs_call.h"
#include "fs_assign.h"
#include "fs_checkpoint.h"
#include "fs_log.h"
#include "fs_lua.h"
#include "fs_rt.h"
#include "fs_table.h"

#define DRAIN_TIMEOUT_MS 10000
#define DEBOUNCE_MS 100

lua_State *(*fs_host_new_state)(void);

struct fs_reload {
    fs_rt *rt;
    char *path, *broker, *store; /* the script, and --broker/--store as given ("" if not) */
    char *broker_url, *data_dir; /* what they and the app resolved to: a reload keeps them */
    int ifd;                     /* inotify, with --reload */
    fs_io io;
    struct watched_dir {
        int wd;
        char *dir;
    } *dirs;
    int ndirs;
    char **files; /* absolute paths whose change reloads */
    int nfiles;
    fs_timer debounce;
    int requested;   /* a change waits for the debounce timer */
    lua_State *next; /* the validated new version, while the old one drains */
    int next_app;    /* registry ref of its app in `next` */
    int64_t t0, deadline;
    int again; /* a change arrived during the swap: reload once more */
    /* What /metrics and the dashboard show: counts, the pauses' total, and
     * the last reloads (a ring; hist[nhist % RELOAD_HIST] is the next). */
    int64_t reloads, failures, pause_ms_sum;
    struct fs_reload_event hist[FS_RELOAD_HIST];
    int64_t nhist;
    fs_tplist restart; /* where partitions restart, during the swap */
};


static void reload_free_hook(void *data);

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static void debounce_cb(fs_timer *t)
{
    struct fs_reload *r = t->data;
    r->requested = 1;
}

void fs_reload_request(fs_rt *rt, const char *why, int64_t delay_ms)
{
    struct fs_reload *r = rt->reload;
    if (!r) {
        fs_warn("%s: this worker cannot reload (its loop is not run by fstream-lua worker)", why);
        return;
    }
    if (r->next) { /* swapping already: the newest files are loaded right after */
        r->again = 1;
        return;
    }
    fs_debug("%s: reloading in %lld ms", why, (long long)delay_ms);
    /* Editors save in several steps (write, rename, chmod): wait until quiet. */
    fs_timer_start(&rt->loop, &r->debounce, delay_ms);
}

static void inotify_cb(fs_io *io, uint32_t events)
{
    struct fs_reload *r = io->data;
    (void)events;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    const char *changed = NULL;
    for (;;) {
        ssize_t n = read(r->ifd, buf, sizeof buf);
        if (n <= 0) break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            if (!ev->len) continue;
            const char *dir = NULL;
            for (int i = 0; i < r->ndirs && !dir; i++)
                if (r->dirs[i].wd == ev->wd) dir = r->dirs[i].dir;
            if (!dir) continue;
            size_t dl = strlen(dir);
            for (int i = 0; i < r->nfiles; i++)
                if (strncmp(r->files[i], dir, dl) == 0 && r->files[i][dl] == '/' &&
                    strcmp(r->files[i] + dl + 1, ev->name) == 0)
                    changed = r->files[i];
        }
    }
    if (changed) {
        char why[PATH_MAX + 16];
        snprintf(why, sizeof why, "%s changed", changed);
        fs_reload_request(r->rt, why, DEBOUNCE_MS);
    }
}

static void clear_watch(struct fs_reload *r)
{
    for (int i = 0; i < r->ndirs; i++) {
        if (r->ifd >= 0) inotify_rm_watch(r->ifd, r->dirs[i].wd);
        free(r->dirs[i].dir);
    }
    free(r->dirs);
    r->dirs = NULL;
    r->ndirs = 0;
    for (int i = 0; i < r->nfiles; i++) free(r->files[i]);
    free(r->files);
    r->files = NULL;
    r->nfiles = 0;
}

int fs_reload_watching(fs_rt *rt)
{
    return rt->reload && rt->reload->ifd >= 0;
}

int fs_reload_watch(fs_rt *rt, const char *const *files, int n)
{
    struct fs_reload *r = rt->reload;
    if (!r || r->ifd < 0) return 0;
    clear_watch(r);
    r->files = calloc((size_t)n + 1, sizeof *r->files);
    r->dirs = calloc((size_t)n + 1, sizeof *r->dirs);
    if (!r->files || !r->dirs) return -ENOMEM;
    for (int i = 0; i < n; i++) {
        char abs[PATH_MAX];
        if (!realpath(files[i], abs)) continue; /* gone meanwhile: its directory still counts */
        char *file = strdup(abs);
        if (!file) return -ENOMEM;
        r->files[r->nfiles++] = file;
        char *slash = strrchr(abs, '/');
        *slash = 0;
        const char *dir = slash == abs ? "/" : abs;
        int known = 0;
        for (int j = 0; j < r->ndirs && !known; j++) known = strcmp(r->dirs[j].dir, dir) == 0;
        if (known) continue;
        /* The directory, not the file: editors that save by renaming a new file
         * over the old one replace the inode a file watch would follow. */
        int wd = inotify_add_watch(r->ifd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE);
        if (wd < 0) return -errno;
        r->dirs[r->ndirs].wd = wd;
        r->dirs[r->ndirs].dir = strdup(dir);
        if (!r->dirs[r->ndirs++].dir) return -ENOMEM;
    }
    fs_debug("watching %d files in %d directories for changes", r->nfiles, r->ndirs);
    return 0;
}

static void reload_hook(void *data)
{
    fs_reload_poll(((struct fs_reload *)data)->rt);
}

static void reload_hup(void *data)
{
    fs_reload_request(((struct fs_reload *)data)->rt, "SIGHUP", 0);
}

static int64_t reload_limit(void *data)
{
    return ((struct fs_reload *)data)->rt->draining ? 2 : -1;
}

int fs_reload_setup(fs_rt *rt, const char *path, const char *broker, const char *store, int watch,
                    const char *broker_url, const char *data_dir, char *err, size_t errlen)
{
    if (!fs_host_new_state) return 0; /* not run by fstream-lua worker: no reload */
    struct fs_reload *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    r->rt = rt;
    r->ifd = -1;
    r->next_app = LUA_NOREF;
    r->path = strdup(path);
    r->broker = strdup(broker);
    r->store = strdup(store);
    r->broker_url = strdup(broker_url);
    r->data_dir = strdup(data_dir);
    r->debounce.cb = debounce_cb;
    r->debounce.data = r;
    rt->reload = r;
    rt->on_hup.fn = reload_hup;
    rt->on_hup.data = r;
    rt->on_free.fn = reload_free_hook;
    rt->on_free.data = rt;
    /* The loop advances a reload on each turn, and looks often while agents drain. */
    if (fs_loop_hook(&rt->loop, FS_LOOP_AFTER_TIMERS, FS_ORDER_RELOAD, reload_hook, r) ||
        fs_loop_limit(&rt->loop, reload_limit, r)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!r->path || !r->broker || !r->store || !r->broker_url || !r->data_dir) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (watch) {
        r->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (r->ifd < 0) {
            snprintf(err, errlen, "inotify: %s", strerror(errno));
            return -1;
        }
        r->io.fd = r->ifd;
        r->io.cb = inotify_cb;
        r->io.data = r;
        if (fs_io_add(&rt->loop, &r->io, EPOLLIN)) {
            snprintf(err, errlen, "inotify: cannot poll it");
            return -1;
        }
    }
    return 0;
}

static void drop_next(struct fs_reload *r)
{
    if (r->next) {
        fs_unref(r->next, r->next_app); /* counted: released before its state goes */
        fs_mem_close(r->next);
    }
    r->next = NULL;
    r->next_app = LUA_NOREF;
}

void fs_reload_free(fs_rt *rt)
{
    struct fs_reload *r = rt->reload;
    if (!r) return;
    fs_timer_stop(&rt->loop, &r->debounce);
    fs_loop_unhook(&rt->loop, r);
    if (rt->on_hup.data == r) rt->on_hup.fn = NULL, rt->on_hup.data = NULL;
    drop_next(r);
    clear_watch(r);
    if (r->ifd >= 0) {
        fs_io_del(&rt->loop, &r->io);
        close(r->ifd);
    }
    free(r->path);
    free(r->broker);
    free(r->store);
    free(r->broker_url);
    free(r->data_dir);
    free(r);
    rt->reload = NULL;
}

/* Pushes what the new version must agree with: {group=, broker=, data_dir=, tables={name=signature}}. */
static void push_running(lua_State *L, fs_rt *rt)
{
    struct fs_reload *r = rt->reload;
    lua_newtable(L);
    lua_pushstring(L, rt->group);
    lua_setfield(L, -2, "group");
    lua_pushstring(L, r->broker_url);
    lua_setfield(L, -2, "broker");
    lua_pushstring(L, r->data_dir);
    lua_setfield(L, -2, "data_dir");
    lua_newtable(L);
    for (int i = 0; i < rt->ntables; i++) {
        lua_pushstring(L, rt->tables[i]->sig ? rt->tables[i]->sig : "");
        lua_setfield(L, -2, rt->tables[i]->name);
    }
    lua_setfield(L, -2, "tables");
}

/* Pushes function `name` of fstream.cli; 0 with the error on the stack if
 * the module does not load. */
static int push_cli(lua_State *L, const char *name)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, "fstream.cli");
    if (fs_call(L, 1, 1, FS_CALL_TRACEBACK) != LUA_OK) return 0;
    lua_getfield(L, -1, name);
    return 1;
}

/* Loads and checks the new version in a state of its own; NULL + message on failure. */
static lua_State *load_next(fs_rt *rt, int *app_ref, char *err, size_t errlen)
{
    struct fs_reload *r = rt->reload;
    lua_State *L = fs_host_new_state();
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (push_cli(L, "prepare")) {
        lua_newtable(L);
        lua_pushstring(L, r->path);
        lua_setfield(L, -2, "app");
        lua_pushstring(L, r->broker);
        lua_setfield(L, -2, "broker");
        lua_pushstring(L, r->store);
        lua_setfield(L, -2, "store");
        push_running(L, rt);
        /* prepare raises the error to show (file:line first), never a traceback of its own. */
        if (fs_call(L, 2, 1, 0) == LUA_OK) {
            *app_ref = fs_ref(L);
            lua_settop(L, 0);
            return L;
        }
    }
    snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object is not a string)");
    fs_mem_close(L);
    return NULL;
}

static void remember(struct fs_reload *r, int ok, int64_t pause_ms, const char *msg)
{
    struct fs_reload_event *e = &r->hist[r->nhist++ % FS_RELOAD_HIST];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e->at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    e->ok = ok;
    e->pause_ms = pause_ms;
    /* A long refusal (a traceback) is cut visibly here; the log has it whole. */
    size_t n = strlen(msg);
    if (n < sizeof e->msg) {
        memcpy(e->msg, msg, n + 1);
    } else {
        memcpy(e->msg, msg, sizeof e->msg - 4);
        memcpy(e->msg + sizeof e->msg - 4, "...", 4);
    }
    if (ok) {
        r->reloads++;
        r->pause_ms_sum += pause_ms;
    } else {
        r->failures++;
    }
}

const struct fs_reload_event *fs_reload_history(fs_rt *rt, int64_t *reloads, int64_t *failures,
                                                int64_t *pause_ms_sum, int64_t *n)
{
    struct fs_reload *r = rt->reload;
    if (!r) return NULL;
    *reloads = r->reloads, *failures = r->failures, *pause_ms_sum = r->pause_ms_sum, *n = r->nhist;
    return r->hist;
}

static void begin(fs_rt *rt)
{
    struct fs_reload *r = rt->reload;
    r->requested = 0;
    char err[2048];
    int64_t t = mono_ms();
    lua_State *L = load_next(rt, &r->next_app, err, sizeof err);
    if (!L) {
        fs_error("reload of %s failed, still running the previous version: %s", r->path, err);
        remember(r, 0, 0, err);
        return;
    }
    fs_debug("reload: %s loaded and checked in %lld ms", r->path, (long long)(mono_ms() - t));
    r->next = L;
    r->t0 = mono_ms();
    r->deadline = r->t0 + DRAIN_TIMEOUT_MS;
    /* Every partition is "revoked" from the old version: its agents finish the
     * event in hand; what they have not started is dropped and fetched again. */
    for (int i = 0; i < rt->ntopics; i++)
        for (int j = 0; j < rt->topics[i]->nparts; j++) {
            fs_part *p = rt->topics[i]->parts[j];
            if (!fs_part_active(p)) continue;
            fs_part_fence(p);
            fs_part_drop_queued(rt, p);
        }
    rt->draining = 1;
    fs_fence_streams(rt, 1);
}

/* Partition positions the new version starts from: after the last finished event. */
static int positions(fs_rt *rt, fs_tplist *l)
{
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        for (int j = 0; j < t->nparts; j++) {
            fs_part *p = t->parts[j];
            if (!fs_part_consuming(p)) continue;
            int64_t off = fs_part_committable(p);
            /* Nothing consumed since the assignment: the position has not moved. */
            if (off >= 0 && !fs_tplist_add(l, t->name, p->id, off)) return -1;
        }
    }
    return 0;
}

static void swap(fs_rt *rt)
{
    struct fs_reload *r = rt->reload;
    int64_t t_drained = mono_ms();
    fs_fence_streams(rt, 0); /* drops the events agents had not started */
    if (fs_ckpt_run(rt->ckpt, FS_CKPT_RELOAD, 35000)) {
        fs_rt_fatal(rt, "reload: the checkpoint before the swap failed; stopping without "
                        "committing (the input is processed again on restart)");
        drop_next(r);
        return;
    }
    if (positions(rt, &r->restart)) {
        fs_rt_fatal(rt, "reload: out of memory");
        drop_next(r);
        return;
    }
    int64_t t_checkpointed = mono_ms();

    /* The old version goes: coroutines, agents (their undone events released,
     * not acknowledged), the table hook, and its state. */
    lua_State *old = rt->L;
    fs_sched_kill_all(&rt->sched);
    for (int i = 0; i < rt->nagents; i++) fs_agent_free(rt, rt->agents[i], old);
    rt->nagents = 0;
    for (int i = 0; i < rt->ntopics; i++) rt->topics[i]->nsubs = 0;
    fs_unref(old, rt->table_hook_ref);
    rt->table_hook_ref = 0;
    if (rt->ud) ((rt_ud *)rt->ud)->rt = NULL;
    rt->ud = NULL;
    fs_mem_close(old);
    int64_t t_closed = mono_ms();

    /* The new version adopts the runtime and declares itself again. */
    lua_State *L = r->next;
    int app_ref = r->next_app;
    r->next = NULL;
    r->next_app = LUA_NOREF;
    /* The runtime's main VM is the new state's from here on (core.adopt
     * confirms it): the old one is closed, nothing of it is left. */
    fs_sched_set_vm(&rt->sched, L);
    rt->L = rt->sched.L;
    rt->rebinding = 1;
    int rc = LUA_ERRRUN;
    if (push_cli(L, "attach")) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, app_ref);
        lua_pushlightuserdata(L, rt);
        rc = fs_call(L, 2, 0, FS_CALL_TRACEBACK);
    }
    rt->rebinding = 0;
    if (rc != LUA_OK)
        fs_rt_fatal(rt, "reload: the new version could not take over: %s", lua_tostring(L, -1));
    lua_settop(L, 0);
    fs_unref(L, app_ref);
    fs_tplist_free(&r->restart);
    rt->draining = 0;
    if (!rt->fatal) {
        int64_t t = mono_ms();
        fs_debug("reload: drain %lld ms, checkpoint %lld ms, old version closed in %lld ms, new "
                 "one took over in %lld ms",
                 (long long)(t_drained - r->t0), (long long)(t_checkpointed - t_drained),
                 (long long)(t_closed - t_checkpointed), (long long)(t - t_closed));
        fs_info("reloaded %s in %lld ms", r->path, (long long)(t - r->t0));
        remember(r, 1, t - r->t0, r->path);
    }
    if (r->again) {
        r->again = 0;
        fs_reload_request(rt, "changed during the reload", DEBOUNCE_MS);
    }
}

int fs_reload_rebound(fs_rt *rt, char *err, size_t errlen)
{
    if (!rt->rebinding) {
        snprintf(err, errlen, "not reloading");
        return -1;
    }
    const fs_tplist *restart_at = &rt->reload->restart;
    if (fs_worker_open_topics(rt, err, errlen)) return -1;
    /* Back to the positions after the last finished events: what the old
     * version dropped is fetched again for the new one. A seek that fails
     * while the group rebalances onto a new subscription is harmless: the
     * partitions are assigned again from the offsets just committed. */
    char failed[256] = "";
    if (restart_at->len && rt->tp && rt->tp->durable)
        rt->tp->ops->seek(rt->tp, restart_at, failed, sizeof failed);
    for (int i = 0; i < rt->ntopics; i++)
        for (int j = 0; j < rt->topics[i]->nparts; j++) {
            fs_part *p = rt->topics[i]->parts[j];
            if (p) fs_part_restart(p);
        }
    rt->paused = 0;
    if (rt->tp && rt->tp->durable) rt->tp->ops->resume(rt->tp, NULL);
    /* Tables: the new Lua objects get every held partition (records read from
     * LMDB again; windows rebuilt from it), tables the new version added are
     * opened and recovered. */
    if (fs_tables_rebind(rt)) {
        snprintf(err, errlen, "%s", rt->fatal_msg);
        return -1;
    }
    /* The new agents take their first steps before the subscription follows
     * them, as at start-up: a group_by inside an agent declares its
     * repartition topic now, so the group rebalances once at most. */
    fs_sched_run_ready(&rt->sched);
    int resubscribed = fs_worker_rebind(rt, err, errlen);
    if (resubscribed < 0) return -1;
    if (failed[0] && resubscribed) {
        fs_warn("reload: seek failed before the rebalance (%s)", failed);
    } else if (failed[0]) {
        snprintf(err, errlen, "seek failed: %s", failed);
        return -1;
    }
    return 0;
}

void fs_reload_poll(fs_rt *rt)
{
    struct fs_reload *r = rt->reload;
    if (!r || rt->stopping || rt->fatal) return;
    if (!r->next) {
        /* A revocation in progress finishes first: it owns the fences. */
        if (!r->requested || fs_assign_busy(rt->assign)) return;
        begin(rt);
        if (!r->next) return;
    }
    fs_sync_acks(rt);
    if (!fs_streams_clear(rt)) {
        if (mono_ms() < r->deadline) return;
        fs_warn("reload: agents still busy after %d s; swapping anyway (the events they hold are "
                "processed again by the new version)",
                DRAIN_TIMEOUT_MS / 1000);
    }
    swap(rt);
}

/* The runtime is freed (rt_free): the reload's state goes with it. */
static void reload_free_hook(void *data)
{
    fs_reload_free(data);
}
