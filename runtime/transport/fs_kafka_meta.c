/* fs_kafka_meta: the topic-listing thread of the kafka transport (see
 * fs_kafka_meta.h). Started by the first list_topics, stopped at close. */
#include "fs_kafka_meta.h"

#include "fs_bgthread.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fs_meta {
    rd_kafka_t *rk;
    int timeout_ms;
    fs_bgthread *th;
    /* The request's answer, touched by the thread only (work, then publish). */
    struct {
        char **names;
        int *parts;
        int n;
        rd_kafka_resp_err_t e;
        int nomem;
    } got;
    /* Under th's mutex: the newest listing, n names (one allocation each)
     * and their partition counts. */
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

static void work(void *data)
{
    fs_meta *m = data;
    const struct rd_kafka_metadata *md = NULL;
    m->got.e = rd_kafka_metadata(m->rk, 1, NULL, &md, m->timeout_ms);
    m->got.names = NULL;
    m->got.parts = NULL;
    m->got.n = 0;
    m->got.nomem = 0;
    if (!m->got.e && md) {
        m->got.n = md->topic_cnt;
        m->got.nomem = copy_listing(md, &m->got.names, &m->got.parts) != 0;
    }
    if (md) rd_kafka_metadata_destroy(md);
}

static void publish(void *data)
{
    fs_meta *m = data;
    if (m->got.e || m->got.nomem) {
        snprintf(m->err, sizeof m->err, "listing the broker's topics failed: %s",
                 m->got.e ? rd_kafka_err2str(m->got.e) : "out of memory");
        return;
    }
    free_listing(m->names, m->n);
    free(m->parts);
    m->names = m->got.names;
    m->parts = m->got.parts;
    m->n = m->got.n;
    m->number++;
    m->err[0] = '\0';
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
    if (!(m->th = fs_bgthread_start("topic-listing", 0, work, publish, m, err, errlen))) {
        free(m);
        return NULL;
    }
    return m;
}

void fs_meta_ask(fs_meta *m) { fs_bgthread_ask(m->th); }

long fs_meta_read(fs_meta *m, int wait_ms, void (*fn)(void *data, const char *name, int partitions),
                  void *data, char *err, size_t errlen)
{
    fs_bgthread_lock(m->th);
    if (wait_ms > 0 && m->number == 0 && !m->err[0]) {
        struct timespec until;
        fs_bgthread_deadline(&until, wait_ms);
        while (m->number == 0 && !m->err[0])
            if (fs_bgthread_wait(m->th, &until)) break;
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
    fs_bgthread_unlock(m->th);
    for (int i = 0; i < n; i++) fn(data, names[i], parts[i]);
    free_listing(names, n);
    free(parts);
    return rc;
}

void fs_meta_free(fs_meta *m)
{
    if (!m) return;
    fs_bgthread_stop(m->th);
    free_listing(m->names, m->n);
    free(m->parts);
    free(m);
}
