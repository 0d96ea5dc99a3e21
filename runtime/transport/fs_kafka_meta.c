/* fs_kafka_meta: the topic-listing thread of the kafka transport (see
 * fs_kafka_meta.h). Started by the first list_topics, stopped at close. */
#include "fs_kafka_meta.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fs_meta {
    rd_kafka_t *rk;
    int timeout_ms;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the thread waits here for asked or stop */
    pthread_cond_t done; /* a reader waiting for a first listing waits here */
    int asked, busy, stop;
    /* The newest listing: n names (one allocation each) and their partition counts. */
    char **names;
    int *parts;
    int n;
    long number; /* listings made so far */
    char err[256]; /* why the last request failed ("" when it did not) */
};

/* Copies a metadata answer into a listing: 0, or -1 out of memory. */
static int copy_listing(const struct rd_kafka_metadata *md, char ***names, int **parts)
{
    int n = md->topic_cnt;
    *names = calloc((size_t)(n > 0 ? n : 1), sizeof **names);
    *parts = calloc((size_t)(n > 0 ? n : 1), sizeof **parts);
    if (!*names || !*parts) goto fail;
    for (int i = 0; i < n; i++) {
        if (!((*names)[i] = strdup(md->topics[i].topic))) goto fail;
        (*parts)[i] = md->topics[i].partition_cnt;
    }
    return 0;
fail:
    for (int i = 0; *names && i < n; i++) free((*names)[i]);
    free(*names);
    free(*parts);
    *names = NULL;
    *parts = NULL;
    return -1;
}

static void free_listing(char **names, int n)
{
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
}

static void *run(void *arg)
{
    fs_meta *m = arg;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        while (!m->asked && !m->stop) pthread_cond_wait(&m->wake, &m->mu);
        if (m->stop) break;
        m->asked = 0;
        m->busy = 1;
        pthread_mutex_unlock(&m->mu);

        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(m->rk, 1, NULL, &md, m->timeout_ms);
        char **names = NULL;
        int *parts = NULL, n = 0, nomem = 0;
        if (!e && md) {
            n = md->topic_cnt;
            nomem = copy_listing(md, &names, &parts) != 0;
        }
        if (md) rd_kafka_metadata_destroy(md);

        pthread_mutex_lock(&m->mu);
        m->busy = 0;
        if (e || nomem) {
            snprintf(m->err, sizeof m->err, "listing the broker's topics failed: %s",
                     e ? rd_kafka_err2str(e) : "out of memory");
        } else {
            free_listing(m->names, m->n);
            free(m->parts);
            m->names = names;
            m->parts = parts;
            m->n = n;
            m->number++;
            m->err[0] = '\0';
        }
        pthread_cond_broadcast(&m->done);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

fs_meta *fs_meta_new(rd_kafka_t *rk, int timeout_ms, char *err, size_t errlen)
{
    fs_meta *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->rk = rk;
    m->timeout_ms = timeout_ms;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->wake, NULL);
    pthread_cond_init(&m->done, NULL);
    int e = pthread_create(&m->th, NULL, run, m);
    if (e) {
        snprintf(err, errlen, "cannot start the topic-listing thread: %s", strerror(e));
        pthread_cond_destroy(&m->done);
        pthread_cond_destroy(&m->wake);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return NULL;
    }
    return m;
}

void fs_meta_ask(fs_meta *m)
{
    pthread_mutex_lock(&m->mu);
    if (!m->busy && !m->asked) {
        m->asked = 1;
        pthread_cond_signal(&m->wake);
    }
    pthread_mutex_unlock(&m->mu);
}

long fs_meta_read(fs_meta *m, int wait_ms, void (*fn)(void *data, const char *name, int partitions),
                  void *data, char *err, size_t errlen)
{
    pthread_mutex_lock(&m->mu);
    if (wait_ms > 0 && m->number == 0 && !m->err[0]) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        while (m->number == 0 && !m->err[0] && !m->stop)
            if (pthread_cond_timedwait(&m->done, &m->mu, &until) == ETIMEDOUT) break;
    }
    /* fn runs on a copy, outside the mutex: it may raise (a Lua error) and
     * must not leave the mutex locked behind it. */
    char **names = NULL;
    int *parts = NULL, n = m->n;
    long rc = m->err[0] ? -1 : m->number;
    if (rc < 0) snprintf(err, errlen, "%s", m->err);
    if (n > 0) {
        names = calloc((size_t)n, sizeof *names);
        parts = calloc((size_t)n, sizeof *parts);
        for (int i = 0; names && parts && i < n; i++) {
            if (!(names[i] = strdup(m->names[i]))) {
                free_listing(names, i);
                names = NULL;
                break;
            }
            parts[i] = m->parts[i];
        }
        if (!names || !parts) {
            free(names);
            free(parts);
            names = NULL;
            parts = NULL;
            n = 0;
            rc = -1;
            snprintf(err, errlen, "out of memory");
        }
    }
    pthread_mutex_unlock(&m->mu);
    for (int i = 0; i < n; i++) fn(data, names[i], parts[i]);
    free_listing(names, n);
    free(parts);
    return rc;
}

void fs_meta_free(fs_meta *m)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->stop = 1;
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->th, NULL);
    free_listing(m->names, m->n);
    free(m->parts);
    pthread_cond_destroy(&m->done);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
