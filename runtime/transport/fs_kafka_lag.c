/* fs_kafka_lag: the end-offset thread of the kafka transport (see
 * fs_kafka_lag.h). */
#include "fs_kafka_lag.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fs_lag {
    rd_kafka_t *rk;
    int interval_ms, timeout_ms;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the thread sleeps here between requests; stop wakes it */
    int stop;
    rd_kafka_topic_partition_list_t *ends; /* the newest answer; NULL: none yet */
};

static void *run(void *arg)
{
    fs_lag *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += l->interval_ms / 1000;
        until.tv_nsec += (long)(l->interval_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        while (!l->stop)
            if (pthread_cond_timedwait(&l->wake, &l->mu, &until) == ETIMEDOUT) break;
        if (l->stop) break;
        pthread_mutex_unlock(&l->mu);

        rd_kafka_topic_partition_list_t *a = NULL;
        int got = 0;
        if (!rd_kafka_assignment(l->rk, &a) && a && a->cnt > 0) {
            /* "Latest" as the timestamp: ListOffsets answers the end offset. */
            for (int i = 0; i < a->cnt; i++) a->elems[i].offset = RD_KAFKA_OFFSET_END;
            got = rd_kafka_offsets_for_times(l->rk, a, l->timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR;
        }

        pthread_mutex_lock(&l->mu);
        if (got) {
            if (l->ends) rd_kafka_topic_partition_list_destroy(l->ends);
            l->ends = a;
            a = NULL;
        }
        if (a) {
            pthread_mutex_unlock(&l->mu);
            rd_kafka_topic_partition_list_destroy(a);
            pthread_mutex_lock(&l->mu);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

fs_lag *fs_lag_new(rd_kafka_t *rk, int interval_ms, int timeout_ms)
{
    fs_lag *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->rk = rk;
    l->interval_ms = interval_ms;
    l->timeout_ms = timeout_ms;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->wake, NULL);
    if (pthread_create(&l->th, NULL, run, l)) {
        pthread_cond_destroy(&l->wake);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return NULL;
    }
    return l;
}

int64_t fs_lag_end(fs_lag *l, const char *topic, int32_t partition)
{
    int64_t end = -1;
    if (!l) return -1;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; l->ends && i < l->ends->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &l->ends->elems[i];
        if (p->partition == partition && !p->err && strcmp(p->topic, topic) == 0) {
            end = p->offset;
            break;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return end;
}

void fs_lag_free(fs_lag *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->wake);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->th, NULL);
    if (l->ends) rd_kafka_topic_partition_list_destroy(l->ends);
    pthread_cond_destroy(&l->wake);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
