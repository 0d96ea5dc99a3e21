/* fs_kafka_lag: the end-offset thread of the kafka transport (see
 * fs_kafka_lag.h). */
#include "fs_kafka_lag.h"

#include "fs_bgthread.h"

#include <stdlib.h>
#include <string.h>

struct fs_lag {
    rd_kafka_t *rk;
    int timeout_ms;
    fs_bgthread *th;
    rd_kafka_topic_partition_list_t *got; /* the request's answer (the thread's only) */
    rd_kafka_topic_partition_list_t *ends; /* under th's mutex: the newest answer; NULL: none yet */
};

static void work(void *data)
{
    fs_lag *l = data;
    rd_kafka_topic_partition_list_t *a = NULL;
    l->got = NULL;
    if (!rd_kafka_assignment(l->rk, &a) && a && a->cnt > 0) {
        /* "Latest" as the timestamp: ListOffsets answers the end offset. */
        for (int i = 0; i < a->cnt; i++) a->elems[i].offset = RD_KAFKA_OFFSET_END;
        if (rd_kafka_offsets_for_times(l->rk, a, l->timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            l->got = a;
            a = NULL;
        }
    }
    if (a) rd_kafka_topic_partition_list_destroy(a);
}

static void publish(void *data)
{
    fs_lag *l = data;
    if (!l->got) return;
    if (l->ends) rd_kafka_topic_partition_list_destroy(l->ends);
    l->ends = l->got;
    l->got = NULL;
}

fs_lag *fs_lag_new(rd_kafka_t *rk, int interval_ms, int timeout_ms)
{
    char err[128];
    fs_lag *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->rk = rk;
    l->timeout_ms = timeout_ms;
    if (!(l->th = fs_bgthread_start("end-offset", interval_ms, work, publish, l, err, sizeof err))) {
        free(l);
        return NULL;
    }
    return l;
}

int64_t fs_lag_end(fs_lag *l, const char *topic, int32_t partition)
{
    int64_t end = -1;
    if (!l) return -1;
    fs_bgthread_lock(l->th);
    for (int i = 0; l->ends && i < l->ends->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &l->ends->elems[i];
        if (p->partition == partition && !p->err && strcmp(p->topic, topic) == 0) {
            end = p->offset;
            break;
        }
    }
    fs_bgthread_unlock(l->th);
    return end;
}

void fs_lag_free(fs_lag *l)
{
    if (!l) return;
    fs_bgthread_stop(l->th);
    if (l->ends) rd_kafka_topic_partition_list_destroy(l->ends);
    free(l);
}
