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
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_call.h"
#include "fs_log.h"
#include "fs_rt.h"
#include "fs_store.h"

#define RECOVERY_BATCH 20000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* hook(event, partition, table_id, keys): table_id 0 = every partitioned
 * (non-global) table; keys (for "changed") is on the stack top when nkeys. */
static int call_hook(fs_rt *rt, const char *event, int32_t p, int tid, int with_keys)
{
    lua_State *L = rt->L;
    if (rt->table_hook_ref <= 0) {
        if (with_keys) lua_pop(L, 1);
        return 0;
    }
    lua_pushcfunction(L, fs_call_msgh);
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->table_hook_ref);
    lua_pushstring(L, event);
    lua_pushinteger(L, p);
    lua_pushinteger(L, tid);
    int base = lua_gettop(L) - 4;
    if (with_keys) {
        lua_pushvalue(L, base - 1);
        lua_remove(L, base - 1);
        base--;
    }
    if (lua_pcall(L, with_keys ? 4 : 3, 0, base)) {
        fs_rt_fatal(rt, "tables (%s): %s", event, lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

#define IN_HEADER "fstream-in"

/* Calls fn for every input topic whose partition p this worker holds, with the
 * offset the state staged now reflects (the checkpoint's snapshot, or now). */
static void each_input(fs_rt *rt, int32_t p, int use_snap,
                       void (*fn)(void *ud, const char *topic, int64_t off), void *ud)
{
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        if (!t->table_input || p >= t->nparts || !fs_part_consuming(t->parts[p])) continue;
        int64_t off = use_snap ? t->parts[p]->snap : fs_part_committable(t->parts[p]);
        if (off >= 0) fn(ud, t->name, off);
    }
}

struct hdr_acc {
    char *out;
    size_t n, size;
};

static void add_hdr(void *ud, const char *topic, int64_t off)
{
    struct hdr_acc *a = ud;
    int m = snprintf(a->out + a->n, a->size - a->n, "%s@%lld;", topic, (long long)off);
    if (m > 0 && (size_t)m < a->size - a->n) a->n += (size_t)m;
    else a->out[a->n] = 0; /* too long: keep the topics that fit */
}

int fs_tables_flush(fs_rt *rt, int force)
{
    if (!rt->ntables) return 0;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++)
            if (t->parts[p].store) {
                /* "topic@offset;...": what the state staged now reflects. */
                struct hdr_acc acc = {t->parts[p].in_hdr, 0, sizeof t->parts[p].in_hdr};
                acc.out[0] = 0;
                each_input(rt, p, 0, add_hdr, &acc);
            }
    }
    if (call_hook(rt, "flush", -1, 0, 0)) return -1;
    if (!force) return 0;
    char err[512];
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            struct fs_tpart *tp = &t->parts[p];
            if (!tp->store || !tp->in_hdr[0] || t->global) continue;
            /* Re-writing a key with its newest value changes nothing under compaction,
             * and the record's header tells the next owner where input resumes. The
             * newest value is the last staged one if any (LMDB may not have it yet). */
            int found = 0;
            if (tp->nops) {
                struct fs_staged *op = &tp->ops[tp->nops - 1];
                fs_buf_reset(&rt->kbuf);
                fs_buf_reset(&rt->vbuf);
                if (fs_buf_add(&rt->kbuf, tp->arena.data + op->koff, op->klen) ||
                    (!op->del && fs_buf_add(&rt->vbuf, tp->arena.data + op->voff, op->vlen))) {
                    fs_warn("table %s[%d]: out of memory", t->name, p);
                    continue;
                }
                if (fs_table_stage(rt, t, p, rt->kbuf.data, rt->kbuf.len,
                                   op->del ? NULL : (rt->vbuf.data ? rt->vbuf.data : ""), rt->vbuf.len,
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

int fs_table_stage(fs_rt *rt, fs_table *t, int32_t p, const void *k, size_t kl, const void *v,
                   size_t vl, char *err, size_t errlen)
{
    if (p < 0 || p >= t->partitions || !t->parts[p].store) {
        snprintf(err, errlen, "table %s: partition %d is not held by this worker", t->name, (int)p);
        return -1;
    }
    struct fs_tpart *tp = &t->parts[p];
    if (tp->nops == tp->capops) {
        size_t cap = tp->capops ? tp->capops * 2 : 256;
        struct fs_staged *ops = realloc(tp->ops, cap * sizeof *ops);
        if (!ops) goto oom;
        tp->ops = ops;
        tp->capops = cap;
    }
    struct fs_staged *op = &tp->ops[tp->nops];
    op->koff = tp->arena.len;
    op->klen = kl;
    if (fs_buf_add(&tp->arena, k, kl)) goto oom;
    op->del = v == NULL;
    op->voff = tp->arena.len;
    op->vlen = v ? vl : 0;
    if (v && fs_buf_add(&tp->arena, v, vl)) goto oom;
    /* Each record says which input it reflects: whoever replays the changelog
     * resumes the input there, even if the offset commit never happened. */
    rd_kafka_headers_t *h = NULL;
    if (tp->in_hdr[0]) {
        h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, IN_HEADER, -1, tp->in_hdr, -1);
    }
    if (fs_produce(rt, t->changelog, p, k, kl, v, vl, h, 0, NULL, err, errlen)) return -1;
    tp->nops++;
    rt->changelog_records++;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

struct meta_acc {
    fs_store_meta *meta;
    char (*names)[300];
    size_t n, max;
};

static void add_meta(void *ud, const char *topic, int64_t off)
{
    struct meta_acc *a = ud;
    if (a->n == a->max) return;
    snprintf(a->names[a->n], sizeof a->names[a->n], "in/%s", topic);
    a->meta[a->n].name = a->names[a->n];
    a->meta[a->n].value = off;
    a->n++;
}

int fs_tables_write(fs_rt *rt, int use_snap)
{
    char err[512];
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            struct fs_tpart *tp = &t->parts[p];
            if (!tp->store || !tp->nops) continue;
            fs_store_op *ops = malloc(tp->nops * sizeof *ops);
            if (!ops) return -1;
            for (size_t j = 0; j < tp->nops; j++) {
                struct fs_staged *s = &tp->ops[j];
                ops[j].key = tp->arena.data + s->koff;
                ops[j].klen = s->klen;
                ops[j].val = s->del ? NULL : tp->arena.data + s->voff;
                ops[j].vlen = s->vlen;
            }
            fs_store_meta meta[65];
            char names[64][300];
            struct meta_acc acc = {meta, names, 0, 64};
            each_input(rt, p, use_snap, add_meta, &acc);
            size_t nmeta = acc.n;
            if (tp->cl_next >= 0 && !t->global) { /* the tail owns a global table's */
                meta[nmeta].name = "changelog";
                meta[nmeta].value = tp->cl_next;
                nmeta++;
            }
            int rc = fs_store_write(tp->store, ops, tp->nops, meta, nmeta, 1, err, sizeof err);
            free(ops);
            if (rc) {
                fs_rt_fatal(rt, "table %s[%d]: %s", t->name, p, err);
                return -1;
            }
            rt->lmdb_writes += (int64_t)tp->nops;
            tp->nops = 0;
            fs_buf_reset(&tp->arena);
        }
    }
    return 0;
}

int64_t fs_tables_resume_offset(fs_rt *rt, const char *topic, int32_t p)
{
    char name[300], err[256];
    snprintf(name, sizeof name, "in/%s", topic);
    int64_t best = -1;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (p >= t->partitions || !t->parts[p].store) continue;
        int64_t v;
        int found;
        if (fs_store_meta_get(t->parts[p].store, name, &v, &found, err, sizeof err) == 0 && found &&
            v > best)
            best = v;
    }
    return best;
}

/* Keeps, per input topic, the largest offset named in a record's fstream-in header. */
struct in_offsets {
    int n;
    char names[32][256];
    int64_t offs[32];
};

static void note_input(struct in_offsets *io, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h;
    const void *v;
    size_t vl;
    if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, IN_HEADER, &v, &vl)) return;
    char buf[1024];
    if (vl >= sizeof buf) return;
    memcpy(buf, v, vl);
    buf[vl] = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        char *at = strrchr(tok, '@');
        if (!at) continue;
        *at = 0;
        int64_t off = strtoll(at + 1, NULL, 10);
        int i;
        for (i = 0; i < io->n && strcmp(io->names[i], tok); i++) {}
        if (i == io->n) {
            if (io->n == 32 || strlen(tok) >= sizeof io->names[0]) continue;
            snprintf(io->names[io->n], sizeof io->names[0], "%s", tok);
            io->offs[io->n++] = -1;
        }
        if (off > io->offs[i]) io->offs[i] = off;
    }
}

/* Replays changelog partition p from the offset the store covers to the end. */
static int recover(fs_rt *rt, fs_table *t, int32_t p)
{
    struct fs_tpart *tp = &t->parts[p];
    char err[512];
    int64_t start = 0, v;
    int found;
    if (fs_store_meta_get(tp->store, "changelog", &v, &found, err, sizeof err)) {
        fs_rt_fatal(rt, "table %s[%d]: %s", t->name, (int)p, err);
        return -1;
    }
    if (found) start = v;
    int64_t lo = 0, hi = 0;
    const char *cl = t->changelog->name;
    rd_kafka_resp_err_t e;
    /* A changelog created a moment ago may not have a leader yet: wait a little.
     * Short attempts, so that a stop requested meanwhile is seen within a second. */
    for (int tries = 0;; tries++) {
        e = rd_kafka_query_watermark_offsets(rt->recovery, cl, p, &lo, &hi, 1000);
        int transient = e == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
                        e == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
                        e == RD_KAFKA_RESP_ERR__TRANSPORT || e == RD_KAFKA_RESP_ERR__TIMED_OUT;
        if (!transient || tries == 400) break;
        if (fs_signals_stop_requested()) {
            fs_warn("recovery of table %s[%d] interrupted by a stop before it began", t->name, (int)p);
            fs_rt_poll_signals(rt);
            return 1;
        }
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION) {
        lo = hi = 0;
    } else if (e) {
        fs_rt_fatal(rt, "table %s[%d]: cannot read the end of %s: %s", t->name, (int)p, cl,
                    rd_kafka_err2str(e));
        return -1;
    }
    if (start > hi) {
        fs_rt_fatal(rt,
                    "table %s[%d]: local state (in %s) covers changelog %s up to offset %lld but the "
                    "changelog ends at %lld — was the changelog deleted or recreated? Run "
                    "`fstream-lua reset` to rebuild from what the changelog holds",
                    t->name, (int)p, fs_store_path(tp->store), cl, (long long)start, (long long)hi);
        return -1;
    }
    if (start < lo) {
        if (found)
            fs_warn("table %s[%d]: changelog %s starts at %lld but local state stops at %lld: "
                    "%lld records are gone from the broker",
                    t->name, (int)p, cl, (long long)lo, (long long)start, (long long)(lo - start));
        start = lo;
    }
    if (start >= hi) {
        tp->cl_next = start;
        return 0;
    }
    int64_t total = hi - start, done = 0;
    fs_info("recovering table %s[%d]: %lld changelog records (offsets %lld..%lld)", t->name, (int)p,
            (long long)total, (long long)start, (long long)(hi - 1));
    rd_kafka_topic_partition_list_t *a = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(a, cl, p)->offset = start;
    rd_kafka_assign(rt->recovery, a);
    rd_kafka_topic_partition_list_destroy(a);
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rt->recovery);
    double t0 = now_s(), last_log = t0;
    fs_store_op *ops = malloc(RECOVERY_BATCH * sizeof *ops);
    rd_kafka_message_t **held = malloc(RECOVERY_BATCH * sizeof *held);
    size_t nops = 0;
    int64_t next = start;
    int rc = 0, idle = 0;
    struct in_offsets inputs = {0};
    while (next < hi && rc == 0) {
        if (fs_signals_stop_requested()) {
            /* LMDB holds every batch written so far with the changelog offset it
             * covers: the next start goes on from there. */
            fs_warn("recovery of table %s[%d] interrupted by a stop at %lld of %lld records; "
                    "the next start resumes it",
                    t->name, (int)p, (long long)done, (long long)total);
            fs_rt_poll_signals(rt);
            rc = 1;
            break;
        }
        rd_kafka_message_t *msgs[1024];
        size_t room = RECOVERY_BATCH - nops < 1024 ? RECOVERY_BATCH - nops : 1024;
        ssize_t n = rd_kafka_consume_batch_queue(q, 100, msgs, room);
        if (n <= 0) {
            if (++idle > 300) {
                fs_rt_fatal(rt, "table %s[%d]: changelog %s stopped at %lld of %lld", t->name,
                            (int)p, cl, (long long)next, (long long)hi);
                rc = -1;
            }
        }
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = msgs[i];
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    fs_warn("recovery of %s[%d]: %s", cl, (int)p, rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
                continue;
            }
            idle = 0;
            note_input(&inputs, m);
            ops[nops].key = m->key;
            ops[nops].klen = m->key_len;
            ops[nops].val = m->payload;
            ops[nops].vlen = m->len;
            held[nops++] = m;
            next = m->offset + 1;
        }
        if (nops == RECOVERY_BATCH || (nops && next >= hi) || (nops && n <= 0)) {
            fs_store_meta meta = {"changelog", next};
            if (fs_store_write(tp->store, ops, nops, &meta, 1, 0, err, sizeof err)) {
                fs_rt_fatal(rt, "table %s[%d]: %s", t->name, (int)p, err);
                rc = -1;
            }
            for (size_t i = 0; i < nops; i++) rd_kafka_message_destroy(held[i]);
            done += (int64_t)nops;
            rt->recovered_records += (int64_t)nops;
            nops = 0;
        }
        double tn = now_s();
        if (tn - last_log >= 2.0) {
            last_log = tn;
            fs_info("recovering table %s[%d]: %lld/%lld records (%.0f%%), %.0f records/s", t->name,
                    (int)p, (long long)done, (long long)total, 100.0 * (double)done / (double)total,
                    (double)done / (tn - t0));
        }
    }
    for (size_t i = 0; i < nops; i++) rd_kafka_message_destroy(held[i]);
    free(ops);
    free(held);
    rd_kafka_queue_destroy(q);
    rd_kafka_assign(rt->recovery, NULL);
    /* The input offsets the replayed state reflects (never moving one back). */
    fs_store_meta meta[32];
    char names[32][300];
    size_t nmeta = 0;
    for (int i = 0; i < inputs.n && rc == 0; i++) {
        int64_t have;
        int found2;
        snprintf(names[nmeta], sizeof names[nmeta], "in/%s", inputs.names[i]);
        if (fs_store_meta_get(tp->store, names[nmeta], &have, &found2, err, sizeof err) == 0 &&
            found2 && have >= inputs.offs[i])
            continue;
        meta[nmeta].name = names[nmeta];
        meta[nmeta].value = inputs.offs[i];
        nmeta++;
    }
    if (rc == 0 && nmeta && fs_store_write(tp->store, NULL, 0, meta, nmeta, 0, err, sizeof err)) {
        fs_rt_fatal(rt, "table %s[%d]: %s", t->name, (int)p, err);
        rc = -1;
    }
    fs_store_sync(tp->store);
    tp->cl_next = next;
    if (rc == 0)
        fs_info("recovered table %s[%d]: %lld records in %.2f s", t->name, (int)p, (long long)done,
                now_s() - t0);
    return rc;
}

/* Opens partition p of t and replays its changelog into it. */
static int open_and_recover(fs_rt *rt, fs_table *t, int32_t p)
{
    char err[512], dir[4200];
    snprintf(dir, sizeof dir, "%s/%d", t->dir, (int)p);
    if (fs_store_open(&t->parts[p].store, dir, 0, err, sizeof err)) {
        fs_rt_fatal(rt, "table %s[%d]: %s", t->name, (int)p, err);
        return -1;
    }
    t->parts[p].cl_next = -1;
    if (!rt->recovery) {
        char g[512];
        snprintf(g, sizeof g, "%s-recovery", rt->group);
        rt->recovery = fs_kafka_new_consumer(rt, g, err, sizeof err);
        if (!rt->recovery) {
            fs_rt_fatal(rt, "recovery consumer: %s", err);
            return -1;
        }
    }
    return recover(rt, t, p);
}

static int hold_now(fs_rt *rt, int32_t p)
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
        if (open_and_recover(rt, t, p)) return -1;
    }
    return call_hook(rt, "hold", p, 0, 0);
}

/* Synchronous for now: done is called before returning (the recovery work
 * replaces this body with a replay the loop drives). */
int fs_tables_hold(fs_rt *rt, int32_t p, void (*done)(void *data, int32_t p, int rc), void *data)
{
    if (hold_now(rt, p) == 0) {
        if (done) done(data, p, 0);
        return 0;
    }
    if (rt->fatal) return -1;
    if (done) done(data, p, 1); /* interrupted by a stop */
    return 0;
}

int fs_tables_start_global(fs_rt *rt)
{
    rd_kafka_topic_partition_list_t *follow = rd_kafka_topic_partition_list_new(8);
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global) continue;
        for (int32_t p = 0; p < t->partitions; p++) {
            if (!rt->tables_in_lua && open_and_recover(rt, t, p)) {
                rd_kafka_topic_partition_list_destroy(follow);
                return -1;
            }
            if (call_hook(rt, "hold", p, t->id + 1, 0)) break;
            if (!rt->tables_in_lua)
                rd_kafka_topic_partition_list_add(follow, t->changelog->name, p)->offset =
                    t->parts[p].cl_next >= 0 ? t->parts[p].cl_next : RD_KAFKA_OFFSET_BEGINNING;
        }
    }
    int rc = 0;
    if (follow->cnt) {
        char err[512], g[512];
        snprintf(g, sizeof g, "%s-global", rt->group);
        rt->tail = fs_kafka_new_consumer(rt, g, err, sizeof err);
        if (!rt->tail) {
            fs_rt_fatal(rt, "global table consumer: %s", err);
            rc = -1;
        } else {
            rt->tq = rd_kafka_queue_get_consumer(rt->tail);
            rd_kafka_assign(rt->tail, follow);
            fs_kafka_watch_queue(rt, rt->tq, &rt->tfd, &rt->tio);
            rt->tail_pending = 1;
        }
    }
    rd_kafka_topic_partition_list_destroy(follow);
    return rc ? rc : (rt->fatal ? -1 : 0);
}

/* Applies records of global tables' changelogs (this worker's own writes come
 * back too: applying them again is harmless) and tells Lua which keys changed. */
void fs_tables_tail_poll(fs_rt *rt)
{
    rt->tail_pending = 0;
    if (!rt->tail) return;
    rd_kafka_message_t *msgs[1024];
    ssize_t n = rd_kafka_consume_batch_queue(rt->tq, 0, msgs, 1024);
    if (n <= 0) return;
    rt->tail_pending = n == 1024;
    char err[512];
    lua_State *L = rt->L;
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
        lua_newtable(L);
        while (j < n && !msgs[j]->err && msgs[j]->rkt == m->rkt && msgs[j]->partition == p) {
            ops[nops].key = msgs[j]->key;
            ops[nops].klen = msgs[j]->key_len;
            ops[nops].val = msgs[j]->payload;
            ops[nops].vlen = msgs[j]->len;
            lua_pushlstring(L, msgs[j]->key ? msgs[j]->key : "", msgs[j]->key_len);
            lua_rawseti(L, -2, (lua_Integer)++nops);
            j++;
        }
        fs_store_meta meta = {"changelog", msgs[j - 1]->offset + 1};
        if (t->parts[p].store &&
            fs_store_write(t->parts[p].store, ops, nops, &meta, 1, 0, err, sizeof err))
            fs_rt_fatal(rt, "global table %s[%d]: %s", t->name, (int)p, err);
        call_hook(rt, "changed", p, t->id + 1, 1);
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
        if (held && fs_tables_hold(rt, p, NULL, NULL)) return -1;
    }
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global) continue;
        for (int32_t p = 0; p < t->partitions; p++)
            if (call_hook(rt, "hold", p, t->id + 1, 0)) return -1;
    }
    return rt->fatal ? -1 : 0;
}

void fs_tables_release(fs_rt *rt, int32_t p)
{
    int any = 0;
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (p < 0 || p >= t->partitions || !t->parts[p].store || t->global) continue;
        fs_store_close(t->parts[p].store);
        t->parts[p].store = NULL;
        t->parts[p].nops = 0;
        fs_buf_reset(&t->parts[p].arena);
        any = 1;
    }
    if (any) call_hook(rt, "release", p, 0, 0);
}

void fs_tables_close(fs_rt *rt)
{
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        for (int p = 0; p < t->partitions; p++) {
            fs_store_close(t->parts[p].store);
            fs_buf_free(&t->parts[p].arena);
            free(t->parts[p].ops);
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
    if (rt->recovery) {
        rd_kafka_consumer_close(rt->recovery);
        rd_kafka_destroy(rt->recovery);
        rt->recovery = NULL;
    }
}
