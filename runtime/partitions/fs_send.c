/* fs_send: the runtime's sends — agents' outputs, tables' changelog records,
 * dead letters — handed to the transport, each counted in the checkpoint
 * epoch it belongs to (rt->inflight) so that a checkpoint knows when every
 * output of its events is delivered. Partitions layer. */
#include <stdio.h>
#include <stdlib.h>

#include <librdkafka/rdkafka.h>

#include "fs_rt.h"
#include "fs_transport.h"

/* The produce call of the Lua bindings and tables, until they build an
 * fs_msg themselves. Takes ownership of hdrs. */
static int to_headers(rd_kafka_headers_t *hdrs, fs_header *small, int nsmall, fs_header **out)
{
    size_t n = hdrs ? rd_kafka_header_cnt(hdrs) : 0;
    fs_header *h = small;
    *out = small;
    if (n > (size_t)nsmall) {
        h = malloc(n * sizeof *h);
        if (!h) return -1;
        *out = h;
    }
    const char *name;
    const void *v;
    size_t vl;
    for (size_t i = 0; i < n && !rd_kafka_header_get_all(hdrs, i, &name, &v, &vl); i++) {
        h[i].name = name;
        h[i].value = v;
        h[i].len = vl;
    }
    return (int)n;
}

int fs_produce(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
               const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
               fs_waiter *w, char *err, size_t errlen)
{
    if (!rt->tp) {
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        snprintf(err, errlen, "cannot send to %s: the worker has stopped", t->name);
        return -1;
    }
    fs_header small[8], *hs;
    int nh = to_headers(hdrs, small, 8, &hs);
    if (nh < 0) {
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        snprintf(err, errlen, "cannot send to %s: out of memory", t->name);
        return -1;
    }
    fs_msg m = {t, partition, key, klen, val, vlen, hs, nh, ts_ms};
    fs_sendctx ctx = {rt->epoch, rt->best_effort, w};
    fs_report now;
    if (w) w->epoch = rt->epoch;
    int rc = rt->tp->ops->produce(rt->tp, &m, ctx, &now, err, errlen);
    if (hs != small) free(hs);
    if (hdrs) rd_kafka_headers_destroy(hdrs);
    if (rc < 0) return -1;
    t->produced++;
    rt->epoch_sends++;
    rt->epoch_bytes += (int64_t)(klen + vlen);
    /* Exactly-once: a transaction takes in no more than its broker can deliver
     * before the checkpoint's deadline (fs_checkpoint.c sets the bound).
     * The worker then hands agents no new events (fs_worker_poll) until a
     * checkpoint seals the transaction; they finish those they have, all
     * the same ones. (Stopping the sender at once would leave it ahead of the
     * agents that had not run yet, and the transaction would hold its
     * outputs of events whose offsets it does not commit.) */
    if (rt->txn_cap_sends && !rt->txn_full &&
        (rt->epoch_sends >= rt->txn_cap_sends || rt->epoch_bytes >= rt->txn_cap_bytes))
        rt->txn_full = 1;
    if (rc == 0) {
        rt->inflight[rt->epoch & 1]++;
    } else if (w) { /* delivered already */
        w->partition = now.partition;
        w->offset = now.offset;
        w->err = 0;
        w->done = 1;
    }
    return 0;
}


/* fstream.testing's own send into the in-memory log (a test's input, not an
 * output of the app). Takes ownership of hdrs. */
int fs_memlog_append(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
                     const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
                     int external, int32_t *part_out, int64_t *offset_out)
{
    (void)external;
    struct fs_memlog *ml = fs_memlog_of(rt->tp);
    fs_header small[8], *hs;
    int nh = to_headers(hdrs, small, 8, &hs);
    if (!ml || nh < 0) return -1;
    fs_msg m = {t, partition, key, klen, val, vlen, hs, nh, ts_ms};
    char err[256];
    int rc = fs_memlog_append_external(ml, &m, part_out, offset_out, err, sizeof err);
    if (hs != small) free(hs);
    return rc;
}
