/* fs_standby: standby copies of table partitions (see fs_standby.h). */
#include "fs_standby.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_kafka.h"
#include "fs_kafka_members.h"
#include "fs_log.h"
#include "fs_store.h"
#include "fs_table_types.h"
#include "fs_vec.h"

#define BATCH 10000          /* records applied per step (one LMDB transaction per copy) */
#define REFRESH_MS 1000      /* how often the group is described again */
#define DESCRIBE_MS 2000     /* one description's bound (ListGroups + DescribeGroups) */
#define IN_HEADER "fstream-in"

/* One copy: partition p of table t. */
struct copy {
    fs_table *t;
    int32_t p;
    fs_store *store;
    int64_t next;    /* the next changelog offset to apply (-1: from the beginning) */
    int64_t applied; /* records applied since it started */
    int current;     /* reached the changelog's end once (said so) */
};

typedef struct fs_standby fs_standby;
struct fs_standby {
    fs_rt *rt;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int fd;
    fs_io io;
    fs_members *members;
    long seen;
    int described; /* a usable description arrived (want[] says something) */
    int warned;    /* a failed description was reported (once, until one works) */
    fs_timer refresh, work;
    FS_VEC(struct copy) copies;
    int maxp;
    signed char *want; /* per partition number: 1 keep a copy, 0 not, -1 no owner (keep as is) */
    rd_kafka_message_t **msgs;
    fs_store_op *ops;
    FS_VEC(fs_store_meta) meta;
    fs_buf names;
};

static int owned_here(fs_rt *rt, int32_t p)
{
    for (int i = 0; i < rt->ntables; i++) {
        fs_table *t = rt->tables[i];
        if (!t->global && p < t->partitions && t->parts[p].store) return 1;
    }
    return 0;
}

/* The consumer follows every copy from its next offset. */
static void reassign(fs_standby *s)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(s->copies.len + 1);
    if (!l) {
        fs_rt_fatal(s->rt, "standby replicas: out of memory");
        return;
    }
    for (size_t i = 0; i < s->copies.len; i++) {
        struct copy *c = &s->copies.items[i];
        rd_kafka_topic_partition_list_add(l, c->t->changelog->name, c->p)->offset =
            c->next >= 0 ? c->next : RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(s->rk, l->cnt ? l : NULL);
    if (e) fs_warn("standby replicas: cannot follow the changelogs: %s", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(l);
}

static void close_copy(fs_standby *s, size_t i, const char *why)
{
    struct copy *c = &s->copies.items[i];
    fs_store_sync(c->store);
    fs_info("standby of table %s[%d] closed at changelog offset %lld (%s)", c->t->name, (int)c->p,
            (long long)c->next, why);
    fs_store_close(c->store);
    fs_vec_remove(&s->copies, i);
}

static int has_copy(fs_standby *s, fs_table *t, int32_t p)
{
    for (size_t i = 0; i < s->copies.len; i++)
        if (s->copies.items[i].t == t && s->copies.items[i].p == p) return 1;
    return 0;
}

/* Opens the copies want[] asks for, closes those it no longer does. */
static void sync_copies(fs_standby *s)
{
    fs_rt *rt = s->rt;
    int changed = 0;
    for (size_t i = 0; i < s->copies.len;) {
        struct copy *c = &s->copies.items[i];
        if (owned_here(rt, c->p)) {
            close_copy(s, i, "this worker owns the partition");
            changed = 1;
        } else if (s->want[c->p] == 0) {
            close_copy(s, i, "another worker keeps it now");
            changed = 1;
        } else {
            i++;
        }
    }
    for (int32_t p = 0; p < s->maxp; p++) {
        if (s->want[p] != 1 || owned_here(rt, p)) continue;
        for (int i = 0; i < rt->ntables; i++) {
            fs_table *t = rt->tables[i];
            if (t->global || p >= t->partitions || has_copy(s, t, p)) continue;
            char dir[4200], err[512];
            if (snprintf(dir, sizeof dir, "%s/%d", t->dir, (int)p) >= (int)sizeof dir) continue;
            struct copy c = {t, p, NULL, -1, 0, 0};
            int rc = fs_store_open_standby(&c.store, dir, err, sizeof err);
            if (rc == FS_STORE_BUSY) {
                /* A worker sharing this data directory owns it: its files are the copy. */
                continue;
            }
            int64_t v;
            int found = 0;
            if (!rc && fs_store_meta_get(c.store, "changelog", &v, &found, err, sizeof err)) rc = -1;
            if (rc) {
                fs_warn("standby of table %s[%d]: %s", t->name, (int)p, err);
                fs_store_close(c.store);
                continue;
            }
            if (found) c.next = v;
            if (fs_store_damage(c.store))
                fs_warn("standby of table %s[%d]: damaged local state: %s; the copy starts over from "
                        "the changelog", t->name, (int)p, fs_store_damage(c.store));
            if (fs_vec_push(&s->copies, c)) {
                fs_store_close(c.store);
                fs_rt_fatal(rt, "standby replicas: out of memory");
                return;
            }
            fs_info("standby of table %s[%d]: following changelog %s from offset %lld", t->name,
                    (int)p, t->changelog->name, (long long)(found ? v : 0));
            changed = 1;
        }
    }
    if (changed) reassign(s);
}

/* The description's answer: want[p] for this worker. */
static void decide(fs_standby *s, const fs_group_view *v)
{
    fs_rt *rt = s->rt;
    int self = -1;
    for (int i = 0; i < v->n; i++)
        if (v->self && v->self[0] && strcmp(v->members[i].id, v->self) == 0) self = i;
    if (self < 0 || strcmp(v->state, "Stable") != 0) return; /* not joined, or moving: wait */
    int *owner = malloc((size_t)s->maxp * sizeof *owner);
    if (!owner) {
        fs_rt_fatal(rt, "standby replicas: out of memory");
        return;
    }
    for (int p = 0; p < s->maxp; p++) owner[p] = -1;
    for (int i = 0; i < v->n; i++)
        for (int j = 0; j < v->members[i].n; j++) {
            int32_t p = v->members[i].parts[j];
            fs_topic *t = p >= 0 && p < s->maxp ? fs_topic_find(rt, v->members[i].topics[j]) : NULL;
            if (t && t->table_input && owner[p] < 0) owner[p] = i;
        }
    int n = rt->standby_replicas < v->n - 1 ? rt->standby_replicas : v->n - 1;
    for (int p = 0; p < s->maxp; p++) {
        if (owner[p] < 0) {
            s->want[p] = -1;
            continue;
        }
        int d = (self - owner[p] + v->n) % v->n; /* how far after the owner this worker comes */
        s->want[p] = d >= 1 && d <= n;
    }
    free(owner);
    s->described = 1;
}

static void refresh_cb(fs_timer *tm)
{
    fs_standby *s = tm->data;
    fs_rt *rt = s->rt;
    if (rt->stopping || rt->closing) return;
    fs_group_view v = {0};
    char err[256];
    long n = fs_members_read(s->members, s->seen, &v, err, sizeof err);
    if (n < 0) {
        if (!s->warned)
            fs_warn("standby replicas: %s (no copies change until the group can be described)", err);
        s->warned = 1;
    } else if (n != s->seen) {
        s->seen = n;
        if (s->warned) fs_info("standby replicas: the group %s is described again", rt->group);
        s->warned = 0;
        decide(s, &v);
        fs_group_view_free(&v);
    }
    if (s->described) sync_copies(s);
    fs_members_ask(s->members);
    fs_timer_start(&rt->loop, &s->refresh, REFRESH_MS);
}

/* ---- applying the changelogs ---- */

static struct copy *copy_of(fs_standby *s, const rd_kafka_message_t *m)
{
    if (!m->rkt) return NULL;
    const char *name = rd_kafka_topic_name(m->rkt);
    for (size_t i = 0; i < s->copies.len; i++) {
        struct copy *c = &s->copies.items[i];
        if (c->p == m->partition && strcmp(c->t->changelog->name, name) == 0) return c;
    }
    return NULL;
}

/* Adds the input offsets a record's fstream-in header names ("topic@offset;...")
 * to s->meta as "in/<topic>" entries (the largest per topic). -1: out of memory. */
static int note_inputs(fs_standby *s, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h;
    const void *v;
    size_t vl;
    if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, IN_HEADER, &v, &vl) || !v)
        return 0;
    const char *p = v, *end = p + vl;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *tok = semi ? semi : end, *at = NULL;
        for (const char *c = p; c < tok; c++)
            if (*c == '@') at = c; /* a topic name may hold '@': the last one counts */
        if (at && at > p) {
            int64_t off = 0;
            for (const char *c = at + 1; c < tok && *c >= '0' && *c <= '9'; c++) off = off * 10 + (*c - '0');
            size_t nl = (size_t)(at - p), i, pos = 0;
            for (i = 0; i < s->meta.len; i++) {
                const char *nm = s->names.data + pos;
                if (strlen(nm) == nl + 3 && !memcmp(nm + 3, p, nl)) break;
                pos += strlen(nm) + 1;
            }
            if (i == s->meta.len) {
                fs_store_meta mm = {NULL, off};
                if (fs_buf_add(&s->names, "in/", 3) || fs_buf_add(&s->names, p, nl) ||
                    fs_buf_addc(&s->names, 0) || fs_vec_push(&s->meta, mm))
                    return -1;
            } else if (off > s->meta.items[i].value) {
                s->meta.items[i].value = off;
            }
        }
        p = tok + 1;
    }
    return 0;
}

/* Writes ops[0..n) to c with the offsets they reach; 0, FS_STORE_BUSY or -1. */
static int write_run(fs_standby *s, struct copy *c, size_t n, int64_t next, char *err, size_t errlen)
{
    /* Never move a stored input offset back (a record of an earlier owner
     * may name an older one than a later owner's replay stored). */
    const char *nm = s->names.data;
    for (size_t i = 0; i < s->meta.len; i++, nm += strlen(nm) + 1) {
        int64_t have;
        int found;
        s->meta.items[i].name = nm;
        if (fs_store_meta_get(c->store, nm, &have, &found, err, errlen) == 0 && found &&
            have > s->meta.items[i].value)
            s->meta.items[i].value = have;
    }
    fs_store_meta cl = {"changelog", next};
    if (fs_vec_push(&s->meta, cl)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return fs_store_write(c->store, s->ops, n, s->meta.items, s->meta.len, 0, err, errlen);
}

static void apply(fs_standby *s)
{
    fs_rt *rt = s->rt;
    ssize_t n = rd_kafka_consume_batch_queue(s->q, 0, s->msgs, BATCH);
    if (n <= 0) return;
    int dropped = 0;
    for (ssize_t i = 0; i < n;) {
        rd_kafka_message_t *m = s->msgs[i];
        struct copy *c = copy_of(s, m);
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                if (c && !c->current && m->offset >= c->next) {
                    if (m->offset > c->next) c->next = m->offset; /* past a transaction's markers */
                    c->current = 1;
                    fs_info("standby of table %s[%d] is current: changelog offset %lld, %lld records "
                            "applied", c->t->name, (int)c->p, (long long)c->next, (long long)c->applied);
                }
            } else {
                fs_warn("standby replicas: %s", rd_kafka_message_errstr(m));
            }
            i++;
            continue;
        }
        /* A run of one copy's records: one LMDB transaction. Records before
         * the copy's next offset are an earlier assignment's. */
        ssize_t j = i;
        size_t nops = 0;
        int64_t next = c ? c->next : -1;
        s->meta.len = 0;
        fs_buf_reset(&s->names);
        int oom = 0;
        for (; j < n && !s->msgs[j]->err && copy_of(s, s->msgs[j]) == c; j++) {
            rd_kafka_message_t *r = s->msgs[j];
            if (!c || r->offset < c->next) continue;
            if (note_inputs(s, r)) oom = 1;
            s->ops[nops].key = r->key ? r->key : "";
            s->ops[nops].klen = r->key_len;
            s->ops[nops].val = r->payload;
            s->ops[nops].vlen = r->len;
            nops++;
            next = r->offset + 1;
        }
        if (c && nops) {
            char err[512];
            int rc = oom ? (snprintf(err, sizeof err, "out of memory"), -1)
                         : write_run(s, c, nops, next, err, sizeof err);
            if (rc == 0) {
                c->next = next;
                c->applied += (int64_t)nops;
            } else {
                size_t at = (size_t)(c - s->copies.items);
                if (rc != FS_STORE_BUSY) fs_warn("standby of table %s[%d]: %s", c->t->name, (int)c->p, err);
                /* An owner sharing the data directory took it (BUSY), or the
                 * copy cannot be written: it closes, the next refresh may
                 * open it again. */
                close_copy(s, at, rc == FS_STORE_BUSY ? "a worker sharing this data directory owns it"
                                                      : "it cannot be written");
                dropped = 1;
            }
        }
        i = j;
    }
    for (ssize_t i = 0; i < n; i++) rd_kafka_message_destroy(s->msgs[i]);
    if (dropped) reassign(s);
    if (n == BATCH && !rt->stopping) fs_timer_start(&rt->loop, &s->work, 0);
}

static void work_cb(fs_timer *tm)
{
    apply(tm->data);
}

static void io_cb(fs_io *io, uint32_t events)
{
    fs_standby *s = io->data;
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    if (!fs_timer_active(&s->work)) fs_timer_start(&s->rt->loop, &s->work, 0);
}

/* ---- the interface ---- */

int fs_standby_start(fs_rt *rt)
{
    if (rt->standby_replicas <= 0 || rt->standby || rt->tables_in_lua) return 0;
    int maxp = 0;
    for (int i = 0; i < rt->ntables; i++)
        if (!rt->tables[i]->global && rt->tables[i]->partitions > maxp) maxp = rt->tables[i]->partitions;
    if (!maxp) return 0;
    rd_kafka_t *consumer = fs_kafka_group_consumer(rt->tp);
    if (!consumer) {
        fs_info("standby_replicas: this worker is its group's only member (memory://): no standby copies");
        return 0;
    }
    fs_standby *s = calloc(1, sizeof *s);
    char err[512], g[512];
    if (!s) goto oom;
    s->rt = rt;
    s->fd = -1;
    s->maxp = maxp;
    s->want = calloc((size_t)maxp, 1);
    s->msgs = malloc(BATCH * sizeof *s->msgs);
    s->ops = malloc(BATCH * sizeof *s->ops);
    if (!s->want || !s->msgs || !s->ops) goto oom;
    snprintf(g, sizeof g, "%s-standby", rt->group);
    s->rk = fs_kafka_reader(rt->tp, g, err, sizeof err);
    if (!s->rk) {
        fs_rt_fatal(rt, "standby consumer: %s", err);
        goto fail;
    }
    s->q = rd_kafka_queue_get_consumer(s->rk);
    if (!s->q || fs_kafka_watch_queue(&rt->loop, s->q, &s->fd, &s->io, io_cb, s)) {
        fs_rt_fatal(rt, "standby consumer: cannot watch its queue");
        goto fail;
    }
    s->members = fs_members_new(s->rk, consumer, rt->group, DESCRIBE_MS, err, sizeof err);
    if (!s->members) {
        fs_rt_fatal(rt, "standby replicas: %s", err);
        goto fail;
    }
    s->refresh.cb = refresh_cb;
    s->work.cb = work_cb;
    s->refresh.data = s->work.data = s;
    rt->standby = s;
    fs_members_ask(s->members);
    fs_timer_start(&rt->loop, &s->refresh, REFRESH_MS);
    fs_info("standby_replicas = %d: keeping copies of the table partitions the group's order gives "
            "this worker", rt->standby_replicas);
    return 0;
oom:
    fs_rt_fatal(rt, "standby replicas: out of memory");
fail:
    rt->standby = s;
    fs_standby_free(rt);
    return -1;
}

void fs_standby_drop(fs_rt *rt, int32_t p)
{
    fs_standby *s = rt->standby;
    if (!s) return;
    int changed = 0;
    for (size_t i = 0; i < s->copies.len;)
        if (s->copies.items[i].p == p) {
            close_copy(s, i, "this worker takes the partition over");
            changed = 1;
        } else {
            i++;
        }
    if (changed) reassign(s);
}

void fs_standby_free(fs_rt *rt)
{
    fs_standby *s = rt->standby;
    if (!s) return;
    rt->standby = NULL;
    fs_members_free(s->members); /* before the group's consumer goes */
    fs_timer_stop(&rt->loop, &s->refresh);
    fs_timer_stop(&rt->loop, &s->work);
    while (s->copies.len) close_copy(s, s->copies.len - 1, "the worker stops");
    if (s->fd >= 0) {
        fs_io_del(&rt->loop, &s->io);
        close(s->fd);
    }
    if (s->q) {
        rd_kafka_queue_io_event_enable(s->q, -1, NULL, 0);
        rd_kafka_queue_destroy(s->q);
    }
    if (s->rk) rd_kafka_destroy(s->rk);
    fs_vec_free(&s->copies);
    fs_vec_free(&s->meta);
    fs_buf_free(&s->names);
    free(s->want);
    free(s->msgs);
    free(s->ops);
    free(s);
}
