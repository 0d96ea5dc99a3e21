/* fs_table: tables' partitions on this worker — LMDB stores, staged writes,
 * recovery from the changelog, and where input resumes.
 *
 * Checkpoint order (DESIGN §3): Lua stages every dirty entry, which produces
 * it to the changelog; once every message of the checkpoint is delivered the
 * staged entries go to LMDB in one transaction per partition together with the
 * changelog offset they cover and the input offsets they reflect; then the
 * consumer offsets are committed. LMDB is therefore never ahead of the
 * changelog, and a restart resumes input from the later of the committed
 * offset and the one LMDB recorded. */
#include "fs_table.h"

#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_kafka.h"
#include "fs_recovery.h"
#include "fs_standby.h"
#include "fs_store.h"
#include "fs_vec.h"

/* A hold waiting for its partition's replays. */
struct hold {
    int32_t p;
    void (*done)(void *data, int32_t p, int rc);
    void *data;
};

/* A partition's files another worker still holds (fs_store_open's lock):
 * the open is tried again from a timer until `until` (loop clock). */
struct lockwait {
    fs_table *t;
    int32_t p;
    int64_t since, until;
};

/* The table layer's own state (rt->tables_state), created with the first need
 * and freed by fs_tables_close. */
struct fs_tables_state {
    fs_table_hook_fn hook;
    void *hook_data;
    fs_recovery *rec;
    FS_VEC(struct hold) holds;
    FS_VEC(struct lockwait) waits; /* partitions whose files another worker holds */
    fs_timer wait_timer;           /* retries their opens */
    FS_VEC(fs_store_meta) meta; /* fs_tables_write's scratch */
    fs_buf names;               /* the meta entries' names, NUL-ended, in order */
};

/* Staging capacity (bytes, per partition) kept from one checkpoint to the next. */
#define FS_STAGE_KEEP (256u << 10)

static struct fs_tables_state *state(fs_rt *rt)
{
    if (!rt->tables_state) rt->tables_state = calloc(1, sizeof *rt->tables_state);
    if (!rt->tables_state) fs_rt_fatal(rt, "tables: out of memory");
    return rt->tables_state;
}

int fs_tables_set_hook(fs_rt *rt, fs_table_hook_fn fn, void *data)
{
    struct fs_tables_state *st = state(rt);
    if (!st) return -1;
    st->hook = fn;
    st->hook_data = data;
    return 0;
}

/* tid 0 = every partitioned (non-global) table. */
static int call_hook(fs_rt *rt, const char *event, int32_t p, int tid, const fs_store_op *keys,
                     size_t nkeys)
{
    struct fs_tables_state *st = rt->tables_state;
    if (!st || !st->hook) return 0;
    return st->hook(st->hook_data, event, p, tid, keys, nkeys);
}

#define IN_HEADER "fstream-in"

enum { IN_NOW, IN_SNAP, IN_DELIVERED };

/* Calls fn for every input topic whose partition p this worker holds, with an
 * offset: the one the state staged now reflects (IN_NOW), the checkpoint's
 * snapshot (IN_SNAP), or the last checkpoint's whose messages were all
 * delivered (IN_DELIVERED: the committed one, or the one being committed). */
static int each_input(fs_rt *rt, int32_t p, int which,
                      int (*fn)(void *ud, const char *topic, int64_t off), void *ud)
{
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        if (!t->table_input || p >= t->nparts || !fs_part_consuming(t->parts[p])) continue;
        fs_part *ip = t->parts[p];
        int64_t off = which == IN_SNAP ? ip->snap : which == IN_DELIVERED ? ip->committed : fs_part_committable(ip);
        if (off >= 0 && fn(ud, t->name, off)) return -1;
    }
    return 0;
}

static int add_hdr(void *ud, const char *topic, int64_t off)
{
    fs_buf *b = ud;
    char num[32];
    int m = snprintf(num, sizeof num, "@%lld;", (long long)off);
    return fs_buf_add(b, topic, strlen(topic)) || fs_buf_add(b, num, (size_t)m);
}

/* Every held partition's in_hdr: "topic@offset;..." with each_input's offsets. */
static int set_headers(fs_rt *rt, int which)
{
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++)
            if (t->parts[p].store) {
                fs_buf *h = &t->parts[p].in_hdr;
                fs_buf_reset(h);
                if (each_input(rt, p, which, add_hdr, h) || fs_buf_addc(h, 0)) {
                    fs_rt_fatal(rt, "table %s[%d]: out of memory", t->name, p);
                    return -1;
                }
                h->len--; /* the NUL stays behind the text */
            }
    }
    return 0;
}

int fs_tables_flush(fs_rt *rt, int force)
{
    if (!rt->ntables) return 0;
    /* Whoever replays a record resumes the input at its header's offsets.
     * Under exactly-once a record is seen only with its transaction, which
     * commits those offsets: it says what the state reflects now. Under
     * at-least-once it reaches the broker before the checkpoint's other
     * messages (the agents' outputs) are delivered, and a worker killed in
     * between loses them: the header must not go past the last checkpoint
     * whose messages were all delivered. */
    if (set_headers(rt, rt->eos ? IN_NOW : IN_DELIVERED)) return -1;
    if (call_hook(rt, "flush", -1, 0, NULL, 0)) return -1;
    if (!force) return 0;
    /* A revocation or a stop: the next owner resumes exactly where this one
     * stopped (its checkpoint waits for every message, then for the commit). */
    if (!rt->eos && set_headers(rt, IN_NOW)) return -1;
    char err[512];
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            struct fs_tpart *tp = &t->parts[p];
            if (!tp->store || !tp->in_hdr.len || t->global) continue;
            /* Re-writing a key with its newest value changes nothing under compaction,
             * and the record's header tells the next owner where input resumes. The
             * newest value is the last staged one if any (LMDB may not have it yet). */
            int found = 0;
            if (tp->ops.len) {
                struct fs_staged *op = &tp->ops.items[tp->ops.len - 1];
                fs_buf_reset(&rt->kbuf);
                fs_buf_reset(&rt->vbuf);
                const char *v = FS_STAGED_VAL(tp, op);
                if (fs_buf_add(&rt->kbuf, FS_STAGED_KEY(tp, op), op->klen) ||
                    (v && fs_buf_add(&rt->vbuf, v, op->vlen))) {
                    fs_warn("table %s[%d]: out of memory", t->name, p);
                    continue;
                }
                if (fs_table_stage(rt, t, p, rt->kbuf.data, rt->kbuf.len,
                                   !v ? NULL : (rt->vbuf.data ? rt->vbuf.data : ""), rt->vbuf.len,
                                   err, sizeof err))
                    fs_warn("table %s[%d]: %s", t->name, p, err);
                continue;
            }
            if (fs_store_last(tp->store, &rt->kbuf, &rt->vbuf, &found, err, sizeof err) == 0 &&
                found &&
                fs_table_stage(rt, t, p, rt->kbuf.data, rt->kbuf.len, rt->vbuf.data, rt->vbuf.len,
                               err, sizeof err))
                fs_warn("table %s[%d]: %s", t->name, p, err);
        }
    }
    return 0;
}

/* Staged entry j of partition p to the changelog. Each record says which
 * input it reflects: whoever replays the changelog resumes the input there,
 * even if the offset commit never happened. */
static int send_op(fs_rt *rt, fs_table *t, int32_t p, size_t j, char *err, size_t errlen)
{
    struct fs_tpart *tp = &t->parts[p];
    const struct fs_staged *op = &tp->ops.items[j];
    rd_kafka_headers_t *h = NULL;
    if (tp->in_hdr.len) {
        h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, IN_HEADER, -1, tp->in_hdr.data, (ssize_t)tp->in_hdr.len);
    }
    return fs_produce(rt, t->changelog, p, FS_STAGED_KEY(tp, op), op->klen, FS_STAGED_VAL(tp, op),
                      FS_STAGED_VLEN(op), h, 0, NULL, err, errlen);
}

int64_t fs_tables_send_bound(void)
{
    static int64_t bound;
    if (!bound) {
        const char *env = getenv("FSTREAM_CHANGELOG_INFLIGHT");
        long long v = env ? strtoll(env, NULL, 10) : 0;
        bound = v > 0 ? (int64_t)v : FS_TABLES_SEND_INFLIGHT;
    }
    return bound;
}

int fs_tables_send_staged(fs_rt *rt, int64_t max, int *more, char *err, size_t errlen)
{
    int n = 0;
    *more = 0;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int32_t p = 0; p < t->partitions; p++) {
            struct fs_tpart *tp = &t->parts[p];
            if (!tp->store) continue;
            for (; tp->sent < tp->ops.len; tp->sent++, n++) {
                if (n >= max) {
                    *more = 1;
                    return n;
                }
                if (send_op(rt, t, p, tp->sent, err, errlen)) return -1;
            }
        }
    }
    return n;
}

int fs_table_stage(fs_rt *rt, fs_table *t, int32_t p, const void *k, size_t kl, const void *v,
                   size_t vl, char *err, size_t errlen)
{
    if (p < 0 || p >= t->partitions || !t->parts[p].store) {
        snprintf(err, errlen, "table %s: partition %d is not held by this worker", t->name, (int)p);
        return -1;
    }
    struct fs_tpart *tp = &t->parts[p];
    if (kl >= FS_STAGED_DEL || (v && vl >= FS_STAGED_DEL)) {
        snprintf(err, errlen, "table %s: an entry of %zu + %zu bytes is too large", t->name, kl, vl);
        return -1;
    }
    if (fs_vec_reserve(&tp->ops, tp->ops.len + 1)) goto oom;
    struct fs_staged *op = &tp->ops.items[tp->ops.len];
    op->off = tp->arena.len;
    op->klen = (uint32_t)kl;
    op->vlen = v ? (uint32_t)vl : FS_STAGED_DEL;
    if (fs_buf_add(&tp->arena, k, kl) || (v && fs_buf_add(&tp->arena, v, vl))) goto oom;
    /* Under exactly-once the record goes into the open transaction now. Under
     * at-least-once the checkpoint sends it (fs_tables_send_staged) once the
     * messages of the events it reflects are delivered: a changelog record
     * that reached the broker before them would, after a crash, make a replay
     * skip what they did — a window deleted as closed whose close message
     * never arrived is never closed again. */
    if (rt->eos && send_op(rt, t, p, tp->ops.len, err, errlen)) return -1;
    tp->ops.len++;
    if (rt->eos) tp->sent = tp->ops.len;
    if (!fs_table_internal(t)) rt->changelog_records++;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* One "in/<topic>" meta entry; the names go to st->names, pointers are set once it stops growing. */
static int add_meta(void *ud, const char *topic, int64_t off)
{
    struct fs_tables_state *st = ud;
    fs_store_meta m = {NULL, off};
    return fs_buf_add(&st->names, "in/", 3) || fs_buf_add(&st->names, topic, strlen(topic) + 1) ||
           fs_vec_push(&st->meta, m);
}

int fs_tables_write(fs_rt *rt, int use_snap)
{
    char err[512];
    struct fs_tables_state *st = rt->ntables ? state(rt) : NULL;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            struct fs_tpart *tp = &t->parts[p];
            if (!tp->store || !tp->ops.len) continue;
            fs_store_op *ops = malloc(tp->ops.len * sizeof *ops);
            if (!ops || !st) {
                free(ops);
                fs_rt_fatal(rt, "table %s[%d]: out of memory", t->name, p);
                return -1;
            }
            for (size_t j = 0; j < tp->ops.len; j++) {
                struct fs_staged *s = &tp->ops.items[j];
                ops[j].key = FS_STAGED_KEY(tp, s);
                ops[j].klen = s->klen;
                ops[j].val = FS_STAGED_VAL(tp, s);
                ops[j].vlen = FS_STAGED_VLEN(s);
            }
            st->meta.len = 0;
            fs_buf_reset(&st->names);
            int rc = each_input(rt, p, use_snap ? IN_SNAP : IN_NOW, add_meta, st);
            const char *nm = st->names.data;
            for (size_t j = 0; j < st->meta.len; j++, nm += strlen(nm) + 1) st->meta.items[j].name = nm;
            if (!rc && tp->cl_next >= 0 && !t->global) { /* the tail owns a global table's */
                fs_store_meta m = {"changelog", tp->cl_next};
                rc = fs_vec_push(&st->meta, m);
            }
            if (rc) snprintf(err, sizeof err, "out of memory");
            else rc = fs_store_write(tp->store, ops, tp->ops.len, st->meta.items, st->meta.len, 1, err, sizeof err);
            free(ops);
            if (rc) {
                fs_rt_fatal(rt, "table %s[%d]: %s", t->name, p, err);
                return -1;
            }
            if (!fs_table_internal(t)) rt->lmdb_writes += (int64_t)tp->ops.len;
            tp->ops.len = tp->sent = 0;
            fs_buf_reset(&tp->arena);
            /* A burst of distinct keys grows the staging to megabytes that
             * the usual checkpoint never needs again: let them go. */
            if (tp->arena.cap > FS_STAGE_KEEP) fs_buf_free(&tp->arena);
            if (tp->ops.cap * sizeof *tp->ops.items > FS_STAGE_KEEP) fs_vec_free(&tp->ops);
        }
    }
    return 0;
}

int64_t fs_tables_resume_offset(fs_rt *rt, const char *topic, int32_t p, int64_t committed)
{
    char name[300], err[256];
    if (snprintf(name, sizeof name, "in/%s", topic) >= (int)sizeof name) return committed; /* Kafka: <= 249 */
    /* Each table of the partition has applied the input up to its own stored
     * offset, or up to the committed one (a commit follows every table's write;
     * a table with nothing to write in a checkpoint keeps an older offset but
     * missed nothing). Killed in the middle of a checkpoint, some tables'
     * changelog records may have reached the broker (their replay moved their
     * offset on) and others' not: input resumes where the table that is
     * furthest behind stands, so that no table misses an event. The tables
     * ahead of it see a few events twice, which at-least-once allows. */
    int64_t least = -1;
    int any = 0;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (t->global || p >= t->partitions || !t->parts[p].store) continue;
        int64_t v = committed;
        int found = 0;
        if (fs_store_meta_get(t->parts[p].store, name, &v, &found, err, sizeof err) || !found ||
            v < committed)
            v = committed;
        if (!any || v < least) least = v;
        any = 1;
    }
    return any ? least : committed;
}

/* ---- holding partitions: open, replay, then tell the hook ---- */

static void complete_holds(fs_rt *rt, int32_t p, int rc);
static int p_ready(const struct fs_tables_state *st, int32_t p);

/* A replay ended (fs_recovery's callback). */
static void replayed(void *data, fs_table *t, int32_t p, int rc)
{
    fs_rt *rt = data;
    (void)t;
    if (rc || p_ready(rt->tables_state, p)) complete_holds(rt, p, rc);
}

/* Every hold of p is over: rc 0 once no replay of p is left (the hook is told
 * "hold" first), else the failure or the stop. done may hold or release again:
 * each hold leaves the list before its callback runs. */
static void complete_holds(fs_rt *rt, int32_t p, int rc)
{
    struct fs_tables_state *st = rt->tables_state;
    for (;;) {
        size_t i;
        for (i = 0; i < st->holds.len && st->holds.items[i].p != p; i++) {}
        if (i == st->holds.len) return;
        struct hold h = st->holds.items[i];
        fs_vec_remove(&st->holds, i);
        if (rc == 0) {
            for (int j = 0; j < rt->ntables; j++) {
                fs_table *t = rt->tables[j];
                if (!t->global && p < t->partitions && t->parts[p].store) t->parts[p].hooked = 1;
            }
            if (call_hook(rt, "hold", p, 0, NULL, 0)) rc = -1;
        }
        if (h.done) h.done(h.data, p, rc);
    }
}

static fs_recovery *recovery(fs_rt *rt)
{
    struct fs_tables_state *st = state(rt);
    if (st && !st->rec) {
        st->rec = fs_recovery_new(rt, replayed, rt);
        if (!st->rec) fs_rt_fatal(rt, "recovery: out of memory");
    }
    return st ? st->rec : NULL;
}

/* How long a partition's files may stay locked by another worker before this
 * one gives up (fatal). Revocations close a table's files before the group
 * hands their partition on, so a wait happens only when the previous owner
 * lost the partition without knowing it yet (its session expired: stopped,
 * swapped out) and still writes its last checkpoint. The loop goes on
 * meanwhile (signals, the web, the partitions already held): the open is
 * tried again every FS_STORE_RETRY_MS from a timer. */
#define FS_STORE_WAIT_MS 10000
#define FS_STORE_RETRY_MS 20
#define FS_GLOBAL_COPIES 64

static int dir_of(const fs_table *t, int32_t p, char *dir, size_t dirsize)
{
    return snprintf(dir, dirsize, "%s/%d", t->dir, (int)p) >= (int)dirsize ? -1 : 0;
}

/* Opens the files of partition p of t in dir (`<table dir>/<p>`) for this
 * worker alone (fs_store_open's lock). Workers sharing a data directory each
 * own different partitions of a partitioned table: FS_STORE_BUSY when
 * another one holds them (the caller waits, see lock_retry). A global
 * table's partitions are every worker's: the second worker on the directory
 * keeps its own copy (`<p>/copy-N`), replayed from the changelog like any
 * other. */
static int open_owned(fs_table *t, int32_t p, char *dir, size_t dirsize, char *err, size_t errlen)
{
    fs_store **st = &t->parts[p].store;
    int rc = fs_store_open(st, dir, 0, err, errlen);
    if (rc != FS_STORE_BUSY || !t->global) return rc;
    size_t base = strlen(dir);
    for (int k = 1; k < FS_GLOBAL_COPIES && rc == FS_STORE_BUSY; k++) {
        if (snprintf(dir + base, dirsize - base, "/copy-%d", k) >= (int)(dirsize - base)) {
            snprintf(err, errlen, "its directory's path is too long");
            return -1;
        }
        rc = fs_store_open(st, dir, 0, err, errlen);
    }
    if (rc == 0) fs_debug("global table %s[%d]: another worker uses the files in %.*s; this one keeps its own in %s",
                         t->name, (int)p, (int)base, dir, dir);
    return rc;
}

/* Partition p's files are open: queues the replay of its changelog. */
static int recover_opened(fs_rt *rt, fs_table *t, int32_t p, const char *dir)
{
    const char *damage = fs_store_damage(t->parts[p].store);
    if (damage)
        fs_warn("table %s[%d]: local state in %s was damaged (%s); rebuilding it from changelog %s",
                t->name, (int)p, dir, damage, t->changelog->name);
    t->parts[p].cl_next = -1;
    fs_recovery *rec = recovery(rt);
    if (!rec) return -1;
    if (fs_recovery_add(rec, t, p)) {
        fs_rt_fatal(rt, "table %s[%d]: out of memory", t->name, (int)p);
        return -1;
    }
    return 0;
}

static int table_waiting(const struct fs_tables_state *st, const fs_table *t, int32_t p)
{
    for (size_t i = 0; st && i < st->waits.len; i++)
        if (st->waits.items[i].p == p && st->waits.items[i].t == t) return 1;
    return 0;
}

static int lock_waiting(const struct fs_tables_state *st, int32_t p)
{
    for (size_t i = 0; st && i < st->waits.len; i++)
        if (st->waits.items[i].p == p) return 1;
    return 0;
}

/* Nothing of p is left to open or replay: its holds are answered. */
static int p_ready(const struct fs_tables_state *st, int32_t p)
{
    return !lock_waiting(st, p) && !fs_recovery_pending(st->rec, NULL, p);
}

/* The timer of the lock waits: each is tried once; one that opened goes on
 * to its replay, one past its deadline is fatal. Holds answered here may
 * hold or release again (changing the list): the pass stops there and the
 * timer comes back at once for the rest. */
static void lock_retry(fs_timer *tm)
{
    fs_rt *rt = tm->data;
    struct fs_tables_state *st = rt->tables_state;
    int64_t now = fs_loop_now(&rt->loop);
    for (size_t i = 0; i < st->waits.len; i++) {
        struct lockwait w = st->waits.items[i];
        char err[512], dir[4200];
        (void)dir_of(w.t, w.p, dir, sizeof dir); /* it fitted when the wait began */
        int rc = fs_store_open(&w.t->parts[w.p].store, dir, 0, err, sizeof err);
        if (rc == FS_STORE_BUSY && now < w.until) continue;
        fs_vec_remove(&st->waits, i);
        if (rc == 0) {
            fs_info("table %s[%d]: the other worker let go of its files after %.1f s", w.t->name, (int)w.p,
                    (double)(now - w.since) / 1000.0);
            rc = recover_opened(rt, w.t, w.p, dir);
        } else if (rc == FS_STORE_BUSY) {
            fs_rt_fatal(rt, "table %s[%d]: %s, still after %d s: is another worker on this data directory "
                        "stuck or stopped (SIGSTOP)? It must stop or let go of the partition first",
                        w.t->name, (int)w.p, err, FS_STORE_WAIT_MS / 1000);
        } else {
            fs_rt_fatal(rt, "table %s[%d]: %s", w.t->name, (int)w.p, err);
        }
        if (rc) complete_holds(rt, w.p, -1);
        else if (p_ready(st, w.p)) complete_holds(rt, w.p, 0);
        else continue; /* its replay answers */
        if (rt->tables_state && rt->tables_state->waits.len) fs_timer_start(&rt->loop, tm, 0);
        return;
    }
    if (st->waits.len) fs_timer_start(&rt->loop, tm, FS_STORE_RETRY_MS);
}

/* Opens partition p of t and queues the replay of its changelog, or the wait
 * for another worker to let go of its files. */
static int open_and_recover(fs_rt *rt, fs_table *t, int32_t p)
{
    char err[512], dir[4200];
    if (dir_of(t, p, dir, sizeof dir)) {
        fs_rt_fatal(rt, "table %s[%d]: its directory's path is too long (%s)", t->name, (int)p, t->dir);
        return -1;
    }
    struct fs_tables_state *st = state(rt);
    if (!st || !recovery(rt)) return -1;
    /* A standby copy of it lets go: its files become the owner's, and the
     * replay starts from the changelog offset the copy reached. */
    if (!t->global) fs_standby_drop(rt, p);
    int rc = open_owned(t, p, dir, sizeof dir, err, sizeof err);
    /* A global table busy in all its copies is fatal below: lock_retry
     * retries only an owner's own directory. */
    if (rc == FS_STORE_BUSY && !t->global) {
        int64_t now = fs_loop_now(&rt->loop);
        struct lockwait w = {t, p, now, now + FS_STORE_WAIT_MS};
        if (fs_vec_push(&st->waits, w)) {
            fs_rt_fatal(rt, "table %s[%d]: out of memory", t->name, (int)p);
            return -1;
        }
        fs_warn("table %s[%d]: %s; waiting up to %d s for it to close them", t->name, (int)p, err,
                FS_STORE_WAIT_MS / 1000);
        st->wait_timer.cb = lock_retry;
        st->wait_timer.data = rt;
        if (!fs_timer_active(&st->wait_timer)) fs_timer_start(&rt->loop, &st->wait_timer, FS_STORE_RETRY_MS);
        return 0;
    }
    if (rc) {
        fs_rt_fatal(rt, "table %s[%d]: %s", t->name, (int)p, err);
        return -1;
    }
    return recover_opened(rt, t, p, dir);
}

/* Opens partition p of every partitioned table that does not have it open yet
 * and queues its replay. */
static int open_missing(fs_rt *rt, int32_t p)
{
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global && p >= t->partitions) {
            fs_rt_fatal(rt,
                        "this worker was assigned input partition %d but table %s has %d "
                        "partitions: a table needs the partition count of the topics whose events "
                        "write it (table option partitions, or the app's topic_partitions)",
                        (int)p, t->name, t->partitions);
            return -1;
        }
        if (p < 0 || p >= t->partitions || t->parts[p].store || t->global) continue;
        if (rt->tables_in_lua) continue; /* fstream.testing keeps tables in Lua only */
        if (table_waiting(rt->tables_state, t, p)) continue;
        if (open_and_recover(rt, t, p)) return -1;
    }
    return 0;
}

static int hold_pending(const struct fs_tables_state *st, int32_t p)
{
    for (size_t i = 0; st && i < st->holds.len; i++)
        if (st->holds.items[i].p == p) return 1;
    return 0;
}

int fs_tables_hold(fs_rt *rt, int32_t p, void (*done)(void *data, int32_t p, int rc), void *data)
{
    if (open_missing(rt, p)) return -1;
    struct fs_tables_state *st = state(rt);
    struct hold h = {p, done, data};
    if (!st || fs_vec_push(&st->holds, h)) {
        fs_rt_fatal(rt, "tables: out of memory");
        return -1;
    }
    if (p_ready(st, p)) complete_holds(rt, p, 0);
    return 0;
}

void fs_tables_recovering(fs_rt *rt,
                          void (*fn)(void *ud, const fs_table *t, int32_t p, int64_t done,
                                     int64_t total),
                          void *ud)
{
    if (rt->tables_state) fs_recovery_each(rt->tables_state->rec, fn, ud);
}

void fs_tables_stop_recovery(fs_rt *rt)
{
    struct fs_tables_state *st = rt->tables_state;
    if (st) {
        fs_recovery_free(st->rec);
        st->rec = NULL;
    } else if (rt->recovery) {
        rd_kafka_destroy(rt->recovery);
        rt->recovery = NULL;
    }
}

/* The global tables' follower has records: the loop applies them (fs_tables_tail_poll). */
static void tail_wake_cb(fs_io *io, uint32_t events)
{
    fs_rt *rt = io->data;
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    rt->tail_pending = 1;
}

int fs_tables_start_global(fs_rt *rt)
{
    int any = 0;
    for (int i = 0; i < rt->ntables && !rt->tables_in_lua; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global) continue;
        for (int32_t p = 0; p < t->partitions; p++) {
            if (open_and_recover(rt, t, p)) return -1;
            any = 1;
        }
    }
    if (any && fs_recovery_wait(rt->tables_state->rec)) return -1;
    rd_kafka_topic_partition_list_t *follow = rd_kafka_topic_partition_list_new(8);
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global) continue;
        for (int32_t p = 0; p < t->partitions; p++) {
            if (call_hook(rt, "hold", p, t->id + 1, NULL, 0)) break;
            if (!rt->tables_in_lua)
                rd_kafka_topic_partition_list_add(follow, t->changelog->name, p)->offset =
                    t->parts[p].cl_next >= 0 ? t->parts[p].cl_next : RD_KAFKA_OFFSET_BEGINNING;
        }
    }
    int rc = 0;
    if (follow->cnt) {
        char err[512], g[512];
        snprintf(g, sizeof g, "%s-global", rt->group);
        rt->tail = fs_kafka_reader(rt->tp, g, err, sizeof err);
        if (!rt->tail) {
            fs_rt_fatal(rt, "global table consumer: %s", err);
            rc = -1;
        } else {
            rt->tq = rd_kafka_queue_get_consumer(rt->tail);
            rd_kafka_assign(rt->tail, follow);
            fs_kafka_watch_queue(&rt->loop, rt->tq, &rt->tfd, &rt->tio, tail_wake_cb, rt);
            rt->tail_pending = 1;
        }
    }
    rd_kafka_topic_partition_list_destroy(follow);
    return rc ? rc : (rt->fatal ? -1 : 0);
}

/* Applies records of global tables' changelogs (this worker's own writes come
 * back too: applying them again is harmless) and tells the hook which keys changed. */
void fs_tables_tail_poll(fs_rt *rt)
{
    rt->tail_pending = 0;
    if (!rt->tail) return;
    rd_kafka_message_t *msgs[1024];
    ssize_t n = rd_kafka_consume_batch_queue(rt->tq, 0, msgs, 1024);
    if (n <= 0) return;
    rt->tail_pending = n == 1024;
    char err[512];
    for (ssize_t i = 0; i < n;) {
        rd_kafka_message_t *m = msgs[i];
        fs_topic *ct = m->err || !m->rkt ? NULL : fs_topic_find(rt, rd_kafka_topic_name(m->rkt));
        if (!ct || !ct->table || m->partition >= ct->table->partitions) {
            if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fs_warn("global tables: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            i++;
            continue;
        }
        /* A run of records of one table partition: one LMDB transaction. */
        fs_table *t = ct->table;
        int32_t p = m->partition;
        ssize_t j = i;
        fs_store_op ops[1024];
        size_t nops = 0;
        while (j < n && !msgs[j]->err && msgs[j]->rkt == m->rkt && msgs[j]->partition == p) {
            ops[nops].key = msgs[j]->key ? msgs[j]->key : "";
            ops[nops].klen = msgs[j]->key_len;
            ops[nops].val = msgs[j]->payload;
            ops[nops].vlen = msgs[j]->len;
            nops++;
            j++;
        }
        fs_store_meta meta = {"changelog", msgs[j - 1]->offset + 1};
        if (t->parts[p].store &&
            fs_store_write(t->parts[p].store, ops, nops, &meta, 1, 0, err, sizeof err))
            fs_rt_fatal(rt, "global table %s[%d]: %s", t->name, (int)p, err);
        call_hook(rt, "changed", p, t->id + 1, ops, nops);
        for (ssize_t k = i; k < j; k++) rd_kafka_message_destroy(msgs[k]);
        i = j;
    }
}

int fs_tables_rebind(fs_rt *rt)
{
    if (!rt->ntables) return 0;
    int maxp = 0;
    for (int i = 0; i < rt->ntables; i++)
        if (rt->tables[i]->partitions > maxp) maxp = rt->tables[i]->partitions;
    for (int32_t p = 0; p < maxp; p++) {
        /* Held: some partitioned table has it open, or an input partition is assigned. */
        int held = 0;
        for (int i = 0; i < rt->ntables && !held; i++)
            held = !rt->tables[i]->global && p < rt->tables[i]->partitions && rt->tables[i]->parts[p].store;
        for (int i = 0; i < rt->ntopics && !held; i++) {
            fs_topic *t = rt->topics[i];
            held = t->table_input && p < t->nparts && fs_part_held(t->parts[p]);
        }
        if (!held) continue;
        /* A partition still recovering is handed over by its pending hold, once
         * recovered (the hook reaches whichever version is current then). */
        if (hold_pending(rt->tables_state, p) ? open_missing(rt, p) : fs_tables_hold(rt, p, NULL, NULL))
            return -1;
    }
    /* A table the new version added is replayed now (the events of partitions
     * already assigned keep flowing), with whatever replay was running. */
    struct fs_tables_state *st = rt->tables_state;
    if (st && st->rec && fs_recovery_wait(st->rec))
        return -1;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global) continue;
        for (int32_t p = 0; p < t->partitions; p++)
            if (call_hook(rt, "hold", p, t->id + 1, NULL, 0)) return -1;
    }
    return rt->fatal ? -1 : 0;
}

void fs_tables_release(fs_rt *rt, int32_t p)
{
    struct fs_tables_state *st = rt->tables_state;
    if (st) {
        /* A replay still running stops here; its hold is dropped unanswered. */
        fs_recovery_cancel(st->rec, p, rt->stopping || rt->closing ? "a stop" : "a revocation");
        for (size_t i = 0; i < st->holds.len;)
            if (st->holds.items[i].p == p) fs_vec_remove(&st->holds, i);
            else i++;
        for (size_t i = 0; i < st->waits.len;)
            if (st->waits.items[i].p == p) fs_vec_remove(&st->waits, i);
            else i++;
    }
    int any = 0;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (p < 0 || p >= t->partitions || !t->parts[p].store || t->global) continue;
        fs_store_close(t->parts[p].store);
        t->parts[p].store = NULL;
        t->parts[p].ops.len = t->parts[p].sent = 0;
        fs_buf_reset(&t->parts[p].arena);
        any |= t->parts[p].hooked;
        t->parts[p].hooked = 0;
    }
    if (any) call_hook(rt, "release", p, 0, NULL, 0);
}

void fs_tables_forget_global(fs_rt *rt)
{
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global) continue;
        for (int32_t p = 0; p < t->partitions; p++) {
            struct fs_tpart *tp = &t->parts[p];
            tp->ops.len = tp->sent = 0;
            fs_buf_reset(&tp->arena);
            if (!tp->store) continue;
            /* The Lua side starts over from LMDB: its caches held the writes being undone. */
            call_hook(rt, "release", p, t->id + 1, NULL, 0);
            call_hook(rt, "hold", p, t->id + 1, NULL, 0);
        }
    }
}

void fs_tables_close(fs_rt *rt)
{
    fs_tables_stop_recovery(rt);
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            fs_store_close(t->parts[p].store);
            fs_buf_free(&t->parts[p].arena);
            fs_buf_free(&t->parts[p].in_hdr);
            fs_vec_free(&t->parts[p].ops);
        }
        free(t->parts);
        free(t->sig);
        free(t->dir);
        free(t->name);
        free(t);
    }
    free(rt->tables);
    rt->tables = NULL;
    rt->ntables = 0;
    struct fs_tables_state *st = rt->tables_state;
    if (st) {
        fs_timer_stop(&rt->loop, &st->wait_timer);
        fs_vec_free(&st->waits);
        fs_vec_free(&st->holds);
        fs_vec_free(&st->meta);
        fs_buf_free(&st->names);
        free(st);
        rt->tables_state = NULL;
    }
}
