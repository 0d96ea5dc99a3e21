/* fs_memlog: the in-memory transport behind fstream.testing (fs_transport.h).
 * Each topic is a set of partition logs kept for the runtime's lifetime;
 * "consuming" hands the unread tail of every partition of the topics the
 * worker reads to cb.messages, the same path librdkafka's messages take, so
 * tests exercise the real offset tracking. One worker holds every partition,
 * nothing is committed (nothing outlives the process), and a send is
 * delivered the moment it is made. */
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

#include "fs_transport.h"
#include "fs_vec.h"

struct fs_memmsg {
    char *key, *val; /* NULL: absent */
    size_t klen, vlen;
    fs_header *hdrs; /* names and values in one allocation with the array */
    int nhdrs;
    rd_kafka_headers_t *rdh; /* the same headers for the consumer side, or NULL */
    int64_t ts;
    int external; /* sent by the test, not by the app */
};

struct fs_mempart {
    FS_VEC(struct fs_memmsg) msgs;
    size_t read;
};

/* A topic's logs; fs_topic.tx points here while the transport lives. */
struct fs_memtopic {
    int nparts;
    int rr;
    int reported; /* its partitions were reported assigned */
    struct fs_mempart *parts;
};

struct fs_memlog {
    fs_transport base; /* first */
    int64_t (*now_ms)(void *data);
    void *now_data;
    FS_VEC(fs_topic *) topics;
    FS_VEC(fs_fetched) fetched; /* poll's scratch */
};

static const fs_transport_ops memlog_ops;

struct fs_memlog *fs_memlog_of(fs_transport *tp)
{
    return tp && tp->ops == &memlog_ops ? (struct fs_memlog *)tp : NULL;
}

static struct fs_memtopic *memtopic(struct fs_memlog *ml, fs_topic *t)
{
    if (FS_TXT(t)->tx) return FS_TXT(t)->tx;
    struct fs_memtopic *mt = calloc(1, sizeof *mt);
    if (!mt) return NULL;
    mt->nparts = FS_TXT(t)->partitions > 0 ? FS_TXT(t)->partitions : 1;
    mt->parts = calloc((size_t)mt->nparts, sizeof *mt->parts);
    if (!mt->parts || fs_vec_push(&ml->topics, t)) {
        free(mt->parts);
        free(mt);
        return NULL;
    }
    FS_TXT(t)->tx = mt;
    return mt;
}

static char *dup_bytes(const void *p, size_t n, int *fail)
{
    if (!p) return NULL;
    char *d = malloc(n ? n : 1);
    if (d) memcpy(d, p, n);
    else *fail = 1;
    return d;
}

/* Copies the headers into one block: the array, then each name and value. */
static int copy_headers(struct fs_memmsg *mm, const fs_header *hs, int n)
{
    mm->hdrs = NULL;
    mm->nhdrs = 0;
    mm->rdh = NULL;
    if (n <= 0) return 0;
    size_t size = (size_t)n * sizeof *hs;
    for (int i = 0; i < n; i++) size += strlen(hs[i].name) + 1 + (hs[i].value ? hs[i].len : 0);
    fs_header *c = malloc(size);
    if (!c) return -1;
    char *p = (char *)(c + n);
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(hs[i].name) + 1;
        memcpy(p, hs[i].name, nl);
        c[i].name = p;
        p += nl;
        c[i].len = hs[i].value ? hs[i].len : 0;
        c[i].value = hs[i].value ? p : NULL;
        if (hs[i].value && hs[i].len) memcpy(p, hs[i].value, hs[i].len);
        p += c[i].len;
    }
    mm->rdh = rd_kafka_headers_new((size_t)n);
    if (!mm->rdh) {
        free(c);
        return -1;
    }
    for (int i = 0; i < n; i++)
        rd_kafka_header_add(mm->rdh, c[i].name, -1, c[i].value, (ssize_t)c[i].len);
    mm->hdrs = c;
    mm->nhdrs = n;
    return 0;
}

static void msg_free(struct fs_memmsg *m)
{
    free(m->key);
    free(m->val);
    free(m->hdrs);
    if (m->rdh) rd_kafka_headers_destroy(m->rdh);
}

static int append(struct fs_memlog *ml, const fs_msg *msg, int external, int32_t *part_out,
                  int64_t *offset_out, char *err, size_t errlen)
{
    fs_topic *t = msg->topic;
    struct fs_memtopic *mt = memtopic(ml, t);
    if (!mt) goto oom;
    int32_t partition = msg->partition;
    if (partition < 0)
        partition = msg->key ? fs_murmur2_partition(msg->key, msg->klen, mt->nparts)
                             : (mt->rr++ % mt->nparts);
    if (partition >= mt->nparts) {
        snprintf(err, errlen, "partition %d of %s does not exist", (int)msg->partition, FS_TXT(t)->name);
        return -1;
    }
    struct fs_mempart *p = &mt->parts[partition];
    if (fs_vec_reserve(&p->msgs, p->msgs.len + 1)) goto oom;
    struct fs_memmsg *m = &p->msgs.items[p->msgs.len];
    int fail = 0;
    m->key = dup_bytes(msg->key, msg->klen, &fail);
    m->klen = msg->klen;
    m->val = dup_bytes(msg->value, msg->vlen, &fail);
    m->vlen = msg->vlen;
    if (!fail && copy_headers(m, msg->headers, msg->nheaders)) fail = 1;
    else if (fail) m->hdrs = NULL, m->rdh = NULL;
    if (fail) {
        msg_free(m);
        goto oom;
    }
    m->ts = msg->timestamp > 0 ? msg->timestamp : ml->now_ms(ml->now_data);
    m->external = external;
    *part_out = partition;
    *offset_out = (int64_t)p->msgs.len;
    p->msgs.len++;
    return 0;
oom:
    snprintf(err, errlen, "cannot send to %s: out of memory", FS_TXT(t)->name);
    return -1;
}

int fs_memlog_append_external(struct fs_memlog *ml, const fs_msg *m, int32_t *part_out,
                              int64_t *offset_out, char *err, size_t errlen)
{
    return append(ml, m, 1, part_out, offset_out, err, errlen);
}

static int memlog_produce(fs_transport *tp, const fs_msg *m, fs_sendctx ctx, fs_report *now,
                          char *err, size_t errlen)
{
    int32_t p;
    int64_t off;
    if (append((struct fs_memlog *)tp, m, 0, &p, &off, err, errlen)) return -1;
    now->topic = m->topic;
    now->partition = p;
    now->offset = off;
    now->len = m->value ? m->vlen : 0;
    now->err = 0;
    now->ctx = ctx;
    return 1;
}

static int memlog_poll(fs_transport *tp, int fetch)
{
    struct fs_memlog *ml = (struct fs_memlog *)tp;
    int total = 0;
    if (!fetch) return 0;
    for (size_t i = 0; i < ml->topics.len; i++) {
        fs_topic *t = ml->topics.items[i];
        struct fs_memtopic *mt = FS_TXT(t)->tx;
        if (!tp->cb.consumes || !tp->cb.consumes(tp->cb.data, t)) continue;
        size_t unread = 0;
        for (int p = 0; p < mt->nparts; p++) unread += mt->parts[p].msgs.len - mt->parts[p].read;
        if (!unread) continue;
        if (!mt->reported) {
            /* One worker holds everything: a topic's partitions are its own
             * from the first time it reads them. */
            fs_tplist l = {0};
            for (int p = 0; p < mt->nparts; p++)
                if (!fs_tplist_add(&l, FS_TXT(t)->name, p, FS_OFFSET_INVALID)) {
                    fs_tplist_free(&l);
                    if (tp->cb.error) tp->cb.error(tp->cb.data, -1, "out of memory", 1);
                    return total;
                }
            mt->reported = 1;
            if (tp->cb.assigned) tp->cb.assigned(tp->cb.data, &l);
            fs_tplist_free(&l);
        }
        ml->fetched.len = 0;
        if (fs_vec_reserve(&ml->fetched, unread)) {
            if (tp->cb.error) tp->cb.error(tp->cb.data, -1, "out of memory", 1);
            return total;
        }
        for (int p = 0; p < mt->nparts; p++) {
            struct fs_mempart *mp = &mt->parts[p];
            for (; mp->read < mp->msgs.len; mp->read++) {
                struct fs_memmsg *mm = &mp->msgs.items[mp->read];
                rd_kafka_message_t *m = calloc(1, sizeof *m);
                rd_kafka_headers_t *h = mm->rdh ? rd_kafka_headers_copy(mm->rdh) : NULL;
                if (!m || (mm->rdh && !h)) {
                    free(m);
                    if (h) rd_kafka_headers_destroy(h);
                    if (tp->cb.error) tp->cb.error(tp->cb.data, -1, "out of memory", 1);
                    break;
                }
                m->partition = p;
                m->offset = (int64_t)mp->read;
                m->payload = mm->val;
                m->len = mm->vlen;
                m->key = mm->key;
                m->key_len = mm->klen;
                fs_fetched *f = &ml->fetched.items[ml->fetched.len++];
                f->topic = t;
                f->m = m;
                f->ts = mm->ts;
                f->hdrs = h;
            }
        }
        if (ml->fetched.len && tp->cb.messages)
            tp->cb.messages(tp->cb.data, ml->fetched.items, (int)ml->fetched.len, 1);
        total += (int)ml->fetched.len;
    }
    return total;
}

int fs_memlog_each_output(struct fs_memlog *ml, fs_topic *t,
                          int (*fn)(void *data, const fs_memout *m), void *data)
{
    (void)ml;
    struct fs_memtopic *mt = FS_TXT(t)->tx;
    if (!mt) return 0;
    for (int p = 0; p < mt->nparts; p++) {
        struct fs_mempart *mp = &mt->parts[p];
        for (size_t i = 0; i < mp->msgs.len; i++) {
            struct fs_memmsg *m = &mp->msgs.items[i];
            if (m->external) continue;
            fs_memout o = {p, (int64_t)i, m->key, m->val, m->klen, m->vlen, m->hdrs, m->nhdrs};
            int rc = fn(data, &o);
            if (rc) return rc;
        }
    }
    return 0;
}

static int memlog_resolve(fs_transport *tp, fs_topic *const *ts, int n, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) {
        FS_TXT(ts[i])->resolved = 1;
        if (!memtopic((struct fs_memlog *)tp, ts[i])) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* The in-memory log reads what cb.consumes says at every poll: no group, no rebalance. */
static int memlog_subscribe(fs_transport *tp, char *err, size_t errlen)
{
    (void)tp, (void)err, (void)errlen;
    return 0;
}

static int64_t memlog_undelivered(fs_transport *tp)
{
    (void)tp;
    return 0;
}

static int64_t memlog_flush(fs_transport *tp, int timeout_ms)
{
    (void)tp, (void)timeout_ms;
    return 0;
}

static int memlog_assign(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen)
{
    (void)tp, (void)parts, (void)err, (void)errlen;
    return 0;
}

static int memlog_unassign(fs_transport *tp, const fs_tplist *parts)
{
    (void)tp, (void)parts;
    return 0;
}

static int memlog_assignment(fs_transport *tp, fs_tplist *out)
{
    struct fs_memlog *ml = (struct fs_memlog *)tp;
    for (size_t i = 0; i < ml->topics.len; i++) {
        struct fs_memtopic *mt = FS_TXT(ml->topics.items[i])->tx;
        for (int p = 0; mt->reported && p < mt->nparts; p++)
            if (!fs_tplist_add(out, FS_TXT(ml->topics.items[i])->name, p, FS_OFFSET_INVALID)) return -1;
    }
    return 0;
}

/* Everything is handed over at once: tests see the whole input queued. */
static int memlog_pause(fs_transport *tp, const fs_tplist *parts)
{
    (void)tp, (void)parts;
    return 0;
}

static int memlog_seek(fs_transport *tp, const fs_tplist *parts, char *err, size_t errlen)
{
    (void)tp, (void)parts;
    snprintf(err, errlen, "the in-memory log cannot seek");
    return -1;
}

/* Nothing outlives the process: a commit is done at once. */
static int memlog_commit(fs_transport *tp, const fs_tplist *offsets, int flags, void *ctx)
{
    (void)flags;
    if (tp->cb.commit_done) tp->cb.commit_done(tp->cb.data, ctx, offsets, 0);
    return 0;
}

static int memlog_committed(fs_transport *tp, const fs_tplist *parts, void *ctx)
{
    fs_tplist l = {0};
    if (fs_tplist_copy(&l, parts)) {
        fs_tplist_free(&l);
        return -1;
    }
    for (int i = 0; i < l.len; i++) l.items[i].offset = FS_OFFSET_INVALID;
    if (tp->cb.committed) tp->cb.committed(tp->cb.data, ctx, &l, 0);
    fs_tplist_free(&l);
    return 0;
}

static const char *memlog_strerror(int err)
{
    return err ? "in-memory log error" : "Success";
}

static void memlog_close(fs_transport *tp)
{
    struct fs_memlog *ml = (struct fs_memlog *)tp;
    tp->closing = 1;
    for (size_t i = 0; i < ml->topics.len; i++) {
        fs_topic *t = ml->topics.items[i];
        struct fs_memtopic *mt = FS_TXT(t)->tx;
        for (int p = 0; p < mt->nparts; p++) {
            struct fs_mempart *mp = &mt->parts[p];
            for (size_t j = 0; j < mp->msgs.len; j++) msg_free(&mp->msgs.items[j]);
            fs_vec_free(&mp->msgs);
        }
        free(mt->parts);
        free(mt);
        FS_TXT(t)->tx = NULL;
    }
    fs_vec_free(&ml->topics);
    fs_vec_free(&ml->fetched);
    free(ml);
}

static const fs_transport_ops memlog_ops = {
    .name = "memory",
    .resolve = memlog_resolve,
    .subscribe = memlog_subscribe,
    .poll = memlog_poll,
    .produce = memlog_produce,
    .undelivered = memlog_undelivered,
    .flush = memlog_flush,
    .assign = memlog_assign,
    .unassign = memlog_unassign,
    .assignment = memlog_assignment,
    .pause = memlog_pause,
    .resume = memlog_pause,
    .seek = memlog_seek,
    .commit = memlog_commit,
    .committed = memlog_committed,
    .strerror = memlog_strerror,
    .close = memlog_close,
};

fs_transport *fs_memlog_new(fs_loop *loop, int64_t (*now_ms)(void *data), void *now_data)
{
    struct fs_memlog *ml = calloc(1, sizeof *ml);
    if (!ml) return NULL;
    ml->base.ops = &memlog_ops;
    ml->base.loop = loop;
    ml->base.holds_all = 1;
    ml->now_ms = now_ms;
    ml->now_data = now_data;
    return &ml->base;
}
