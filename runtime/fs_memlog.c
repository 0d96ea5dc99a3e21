/* fs_memlog: the in-memory transport behind fstream.testing. Each topic is a
 * set of partition logs kept for the runtime's lifetime; "consuming" hands the
 * unread tail of every subscribed partition to fs_dispatch, the same path
 * librdkafka's messages take, so tests exercise the real offset tracking. */
#include <stdlib.h>
#include <string.h>

#include "fs_rt.h"

struct fs_memmsg {
    char *key, *val; /* NULL: absent */
    size_t klen, vlen;
    rd_kafka_headers_t *hdrs;
    int64_t ts;
    int external; /* sent by the test, not by the app */
};

struct fs_mempart {
    struct fs_memmsg *msgs;
    size_t n, cap, read;
};

struct fs_memtopic {
    int nparts;
    int rr;
    struct fs_mempart *parts;
};

static fs_memtopic *memtopic(fs_topic *t)
{
    if (!t->mem) {
        t->mem = calloc(1, sizeof *t->mem);
        if (!t->mem) return NULL;
        t->mem->nparts = t->partitions > 0 ? t->partitions : 1;
        t->mem->parts = calloc((size_t)t->mem->nparts, sizeof *t->mem->parts);
    }
    return t->mem;
}

static char *dup_bytes(const void *p, size_t n)
{
    if (!p) return NULL;
    char *d = malloc(n ? n : 1);
    if (d) memcpy(d, p, n);
    return d;
}

int fs_memlog_append(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
                     const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
                     int external, int32_t *part_out, int64_t *offset_out)
{
    fs_memtopic *mt = memtopic(t);
    if (!mt) return -1;
    if (partition < 0)
        partition = key ? fs_murmur2_partition(key, klen, mt->nparts) : (mt->rr++ % mt->nparts);
    if (partition >= mt->nparts) return -1;
    struct fs_mempart *p = &mt->parts[partition];
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        struct fs_memmsg *m = realloc(p->msgs, cap * sizeof *m);
        if (!m) return -1;
        p->msgs = m;
        p->cap = cap;
    }
    struct fs_memmsg *m = &p->msgs[p->n];
    m->key = dup_bytes(key, klen);
    m->klen = klen;
    m->val = dup_bytes(val, vlen);
    m->vlen = vlen;
    m->hdrs = hdrs ? rd_kafka_headers_copy(hdrs) : NULL;
    m->ts = ts_ms > 0 ? ts_ms : fs_rt_wall_ms(rt);
    m->external = external;
    *part_out = partition;
    *offset_out = (int64_t)p->n;
    p->n++;
    return 0;
}

int fs_memlog_deliver(fs_rt *rt)
{
    int total = 0;
    for (int i = 0; i < rt->ntopics; i++) {
        fs_topic *t = rt->topics[i];
        int consumed = 0;
        for (int j = 0; j < t->nsubs; j++) consumed |= !t->subs[j]->closed;
        if (!consumed || !t->mem || rt->stopping) continue;
        fs_memtopic *mt = t->mem;
        size_t unread = 0;
        for (int p = 0; p < mt->nparts; p++) unread += mt->parts[p].n - mt->parts[p].read;
        if (!unread) continue;
        fs_batch *b = fs_batch_new((int)unread, 1);
        if (!b) return total;
        for (int p = 0; p < mt->nparts; p++) {
            struct fs_mempart *mp = &mt->parts[p];
            fs_part *fp = fs_part_get(t, p);
            if (fp && !fs_part_held(fp)) fs_part_assign(fp, -1);
            for (; mp->read < mp->n; mp->read++) {
                struct fs_memmsg *mm = &mp->msgs[mp->read];
                rd_kafka_message_t *m = calloc(1, sizeof *m);
                if (!m) break;
                m->partition = p;
                m->offset = (int64_t)mp->read;
                m->payload = mm->val;
                m->len = mm->vlen;
                m->key = mm->key;
                m->key_len = mm->klen;
                fs_dispatch(rt, b, m, t, mm->ts, mm->hdrs ? rd_kafka_headers_copy(mm->hdrs) : NULL);
                total++;
            }
        }
        fs_batch_done(b);
    }
    return total;
}

void fs_memlog_push_outputs(lua_State *L, fs_rt *rt, fs_topic *t)
{
    (void)rt;
    lua_newtable(L);
    if (!t->mem) return;
    /* Ordered by partition then offset: per-partition order is what Kafka promises. */
    int k = 0;
    for (int p = 0; p < t->mem->nparts; p++) {
        struct fs_mempart *mp = &t->mem->parts[p];
        for (size_t i = 0; i < mp->n; i++) {
            struct fs_memmsg *m = &mp->msgs[i];
            if (m->external) continue;
            lua_createtable(L, 0, 6);
            if (m->key) lua_pushlstring(L, m->key, m->klen), lua_setfield(L, -2, "key_bytes");
            if (m->val) lua_pushlstring(L, m->val, m->vlen), lua_setfield(L, -2, "value_bytes");
            lua_pushinteger(L, p);
            lua_setfield(L, -2, "partition");
            lua_pushinteger(L, (lua_Integer)i);
            lua_setfield(L, -2, "offset");
            if (m->hdrs) {
                lua_newtable(L);
                const char *name;
                const void *v;
                size_t vl;
                for (size_t h = 0; !rd_kafka_header_get_all(m->hdrs, h, &name, &v, &vl); h++) {
                    lua_pushlstring(L, v ? v : "", v ? vl : 0);
                    lua_setfield(L, -2, name);
                }
                lua_setfield(L, -2, "headers");
            }
            lua_rawseti(L, -2, ++k);
        }
    }
}

void fs_memlog_free(fs_topic *t)
{
    if (!t->mem) return;
    for (int p = 0; p < t->mem->nparts; p++) {
        struct fs_mempart *mp = &t->mem->parts[p];
        for (size_t i = 0; i < mp->n; i++) {
            free(mp->msgs[i].key);
            free(mp->msgs[i].val);
            if (mp->msgs[i].hdrs) rd_kafka_headers_destroy(mp->msgs[i].hdrs);
        }
        free(mp->msgs);
    }
    free(t->mem->parts);
    free(t->mem);
    t->mem = NULL;
}
