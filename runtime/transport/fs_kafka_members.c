/* fs_kafka_members: the group-describing thread (see fs_kafka_members.h). */
#include "fs_kafka_members.h"

#include "fs_bgthread.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fs_members {
    rd_kafka_t *rk, *consumer;
    char *group;
    int timeout_ms;
    fs_bgthread *th;
    /* The request's answer, touched by the thread only (work, then publish). */
    struct {
        fs_group_view view;
        int rc;
        char err[256];
    } got;
    /* Under th's mutex: */
    fs_group_view view; /* the newest description, handed over by fs_members_read */
    int have;
    long number;
    char err[256];
};

static void member_free(fs_member *m)
{
    for (int i = 0; i < m->n; i++) free(m->topics[i]);
    free(m->topics);
    free(m->parts);
    free(m->id);
}

void fs_group_view_free(fs_group_view *v)
{
    for (int i = 0; i < v->n; i++) member_free(&v->members[i]);
    free(v->members);
    free(v->self);
    free(v->state);
    memset(v, 0, sizeof *v);
}

/* Big-endian readers over [p, end): -1 when the buffer is too short. */
static int rd16(const unsigned char **p, const unsigned char *end, int *v)
{
    if (end - *p < 2) return -1;
    *v = (int16_t)((*p)[0] << 8 | (*p)[1]);
    *p += 2;
    return 0;
}

static int rd32(const unsigned char **p, const unsigned char *end, int32_t *v)
{
    if (end - *p < 4) return -1;
    *v = (int32_t)((uint32_t)(*p)[0] << 24 | (uint32_t)(*p)[1] << 16 | (uint32_t)(*p)[2] << 8 |
                   (uint32_t)(*p)[3]);
    *p += 4;
    return 0;
}

/* ConsumerProtocolAssignment: int16 version, int32 topic count, each topic an
 * int16-length string and an int32 array of partitions, then user data (not
 * read: later versions add fields after the topics, which are the same). An
 * empty buffer is an empty assignment (a member between generations). */
static int decode(const void *buf, size_t len, fs_member *m)
{
    const unsigned char *p = buf, *end = p + len;
    int version, tl;
    int32_t nt, np;
    if (!len) return 0;
    if (rd16(&p, end, &version) || version < 0 || rd32(&p, end, &nt) || nt < 0) return -1;
    for (int32_t i = 0; i < nt; i++) {
        if (rd16(&p, end, &tl) || tl < 0 || end - p < tl) return -1;
        const unsigned char *name = p;
        p += tl;
        if (rd32(&p, end, &np) || np < 0 || end - p < (ptrdiff_t)np * 4) return -1;
        char **topics = realloc(m->topics, (size_t)(m->n + np + 1) * sizeof *topics);
        if (topics) m->topics = topics;
        int32_t *parts = realloc(m->parts, (size_t)(m->n + np + 1) * sizeof *parts);
        if (parts) m->parts = parts;
        if (!topics || !parts) return -1;
        for (int32_t j = 0; j < np; j++) {
            int32_t part = 0;
            rd32(&p, end, &part);
            if (!(m->topics[m->n] = strndup((const char *)name, (size_t)tl))) return -1;
            m->parts[m->n++] = part;
        }
    }
    return 0;
}

static int by_id(const void *a, const void *b)
{
    return strcmp(((const fs_member *)a)->id, ((const fs_member *)b)->id);
}

/* One description: 0, or -1 with err set. */
static int describe(fs_members *m, fs_group_view *v, char *err, size_t errlen)
{
    const struct rd_kafka_group_list *gl = NULL;
    memset(v, 0, sizeof *v);
    rd_kafka_resp_err_t e = rd_kafka_list_groups(m->rk, m->group, &gl, m->timeout_ms);
    if (e) {
        snprintf(err, errlen, "describing group %s failed: %s", m->group, rd_kafka_err2str(e));
        return -1;
    }
    const struct rd_kafka_group_info *g = NULL;
    for (int i = 0; gl && i < gl->group_cnt; i++)
        if (strcmp(gl->groups[i].group, m->group) == 0) g = &gl->groups[i];
    int rc = 0;
    if (!g) {
        /* Not there yet (before the first join): a description with no member. */
        v->self = strdup("");
        v->state = strdup("Empty");
        if (!v->self || !v->state) goto oom;
        goto out;
    }
    if (g->err) {
        snprintf(err, errlen, "describing group %s failed: %s", m->group, rd_kafka_err2str(g->err));
        rc = -1;
        goto out;
    }
    char *self = rd_kafka_memberid(m->consumer);
    v->self = strdup(self ? self : "");
    if (self) rd_kafka_mem_free(m->consumer, self);
    v->state = strdup(g->state ? g->state : "");
    v->members = calloc((size_t)(g->member_cnt > 0 ? g->member_cnt : 1), sizeof *v->members);
    if (!v->self || !v->state || !v->members) goto oom;
    for (int i = 0; i < g->member_cnt; i++) {
        const struct rd_kafka_group_member_info *gm = &g->members[i];
        fs_member *mm = &v->members[v->n++];
        if (!(mm->id = strdup(gm->member_id ? gm->member_id : ""))) goto oom;
        if (decode(gm->member_assignment, (size_t)(gm->member_assignment_size > 0 ? gm->member_assignment_size : 0), mm)) {
            snprintf(err, errlen, "group %s: member %s has an assignment that cannot be read",
                     m->group, mm->id);
            rc = -1;
            goto out;
        }
    }
    qsort(v->members, (size_t)v->n, sizeof *v->members, by_id);
    goto out;
oom:
    snprintf(err, errlen, "describing group %s: out of memory", m->group);
    rc = -1;
out:
    if (gl) rd_kafka_group_list_destroy(gl);
    if (rc) fs_group_view_free(v);
    return rc;
}

static void work(void *data)
{
    fs_members *m = data;
    m->got.rc = describe(m, &m->got.view, m->got.err, sizeof m->got.err);
}

static void publish(void *data)
{
    fs_members *m = data;
    if (m->got.rc) {
        snprintf(m->err, sizeof m->err, "%s", m->got.err);
        return;
    }
    fs_group_view_free(&m->view);
    m->view = m->got.view;
    memset(&m->got.view, 0, sizeof m->got.view);
    m->have = 1;
    m->number++;
    m->err[0] = '\0';
}

fs_members *fs_members_new(rd_kafka_t *rk, rd_kafka_t *consumer, const char *group,
                           int timeout_ms, char *err, size_t errlen)
{
    fs_members *m = calloc(1, sizeof *m);
    if (m) m->group = strdup(group);
    if (!m || !m->group) {
        if (m) free(m);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->rk = rk;
    m->consumer = consumer;
    m->timeout_ms = timeout_ms;
    if (!(m->th = fs_bgthread_start("group-describing", 0, work, publish, m, err, errlen))) {
        free(m->group);
        free(m);
        return NULL;
    }
    return m;
}

void fs_members_ask(fs_members *m) { fs_bgthread_ask(m->th); }

long fs_members_read(fs_members *m, long seen, fs_group_view *out, char *err, size_t errlen)
{
    fs_bgthread_lock(m->th);
    long rc = m->number;
    if (m->err[0]) {
        snprintf(err, errlen, "%s", m->err);
        rc = -1;
    } else if (m->have && m->number != seen) {
        *out = m->view;
        memset(&m->view, 0, sizeof m->view);
        m->have = 0;
    } else {
        rc = seen;
    }
    fs_bgthread_unlock(m->th);
    return rc;
}

void fs_members_free(fs_members *m)
{
    if (!m) return;
    fs_bgthread_stop(m->th);
    fs_group_view_free(&m->view);
    free(m->group);
    free(m);
}
