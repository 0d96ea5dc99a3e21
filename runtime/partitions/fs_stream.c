/* fs_stream: from "a message arrived" to "every agent has finished it".
 *
 * Each consumed message becomes an fs_event in a batch and is queued to every
 * agent subscribed to its topic. Its partition (fs_part.c) tracks it in its
 * acknowledgement ring until every agent has acknowledged it. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "fs_call.h"
#include "fs_log.h"
#include "fs_rt.h"

fs_topic *fs_topic_find(fs_rt *rt, const char *name)
{
    for (int i = 0; i < rt->ntopics; i++)
        if (strcmp(rt->topics[i]->name, name) == 0) return rt->topics[i];
    return NULL;
}

fs_part *fs_part_get(fs_topic *t, int32_t partition)
{
    if (partition < 0) return NULL;
    if (partition >= t->nparts) {
        int n = partition + 1;
        fs_part **p = realloc(t->parts, (size_t)n * sizeof *p);
        if (!p) return NULL;
        memset(p + t->nparts, 0, (size_t)(n - t->nparts) * sizeof *p);
        t->parts = p;
        t->nparts = n;
    }
    if (!t->parts[partition]) t->parts[partition] = fs_part_new(t, partition);
    return t->parts[partition];
}

/* Events of a revoked partition still waiting in agent queues are dropped:
 * whoever owns the partition next will receive them again. */
void fs_part_drop_queued(fs_rt *rt, fs_part *p)
{
    for (int i = 0; i < rt->nagents; i++) {
        fs_agent *a = rt->agents[i];
        size_t kept = 0;
        for (size_t j = 0; j < a->qlen; j++) {
            fs_event *e = a->q[(a->qhead + j) % a->qcap];
            if (e->part == p) {
                rt->queued--;
                rt->queued_bytes -= fs_event_bytes(e);
                fs_event_release(rt, e);
            } else {
                a->q[(a->qhead + kept) % a->qcap] = e;
                kept++;
            }
        }
        a->qlen = kept;
    }
}

fs_batch *fs_batch_new(int n, int owned)
{
    fs_batch *b = malloc(sizeof *b + (size_t)n * sizeof(fs_event));
    if (!b) return NULL;
    b->live = 1; /* held by the dispatcher until fs_batch_done */
    b->owned = owned;
    b->n = 0;
    return b;
}

static void batch_unref(fs_batch *b)
{
    if (--b->live == 0) free(b);
}

void fs_batch_done(fs_batch *b)
{
    batch_unref(b);
}

static void event_free(fs_event *e)
{
    if (e->batch->owned) {
        if (e->hdrs) rd_kafka_headers_destroy(e->hdrs);
        free(e->m);
    } else {
        rd_kafka_message_destroy(e->m);
    }
    e->m = NULL;
    batch_unref(e->batch);
}

static void agent_push(fs_rt *rt, fs_agent *a, fs_event *e)
{
    if (a->qlen == a->qcap) {
        size_t cap = a->qcap ? a->qcap * 2 : 1024;
        fs_event **q = malloc(cap * sizeof *q);
        if (!q) {
            fs_rt_fatal(rt, "out of memory queueing an event for agent %s", a->name);
            fs_event_ack(rt, e);
            return;
        }
        for (size_t i = 0; i < a->qlen; i++) q[i] = a->q[(a->qhead + i) % a->qcap];
        free(a->q);
        a->q = q;
        a->qcap = cap;
        a->qhead = 0;
    }
    a->q[(a->qhead + a->qlen) % a->qcap] = e;
    a->qlen++;
    rt->queued++;
    rt->queued_bytes += fs_event_bytes(e);
    for (int i = 0; i < a->nstreams; i++) {
        fs_stream *s = a->streams[i];
        if (s->waiter) {
            fs_co *co = s->waiter;
            s->waiter = NULL;
            fs_sched_ready(co);
            break;
        }
    }
}

void fs_dispatch(fs_rt *rt, fs_batch *b, rd_kafka_message_t *m, fs_topic *t, int64_t ts,
                 rd_kafka_headers_t *hdrs)
{
    fs_event *e = &b->ev[b->n++];
    b->live++;
    e->m = m;
    e->batch = b;
    e->ts = ts;
    e->hdrs = hdrs;
    e->part = fs_part_get(t, m->partition);
    int nsubs = 0;
    for (int i = 0; i < t->nsubs; i++) nsubs += !t->subs[i]->closed;
    if (!fs_part_active(e->part)) { /* stale: after a revoke */
        e->part = NULL;
        event_free(e);
        return;
    }
    fs_part *p = e->part;
    e->gen = p->gen;
    e->refs = nsubs;
    t->consumed++;
    rt->events_in++;
    if (fs_part_track(p, m->offset, nsubs, &e->seq)) {
        fs_rt_fatal(rt, "out of memory tracking offsets of %s[%d]", t->name, (int)p->id);
        event_free(e);
        return;
    }
    if (nsubs == 0) {
        e->refs = 1;
        fs_event_ack(rt, e);
        return;
    }
    for (int i = 0; i < t->nsubs; i++)
        if (!t->subs[i]->closed) agent_push(rt, t->subs[i], e);
}

/* Lets go of an event an agent will not process here (its partition is being
 * revoked): its offset stays uncommitted so the next owner processes it. */
void fs_event_release(fs_rt *rt, fs_event *e)
{
    (void)rt;
    if (--e->refs <= 0) event_free(e);
}

void fs_event_ack(fs_rt *rt, fs_event *e)
{
    if (e->part) fs_part_ack(e->part, e->gen, e->seq);
    if (--e->refs <= 0) {
        rt->events_acked++;
        event_free(e);
    }
}

void fs_stream_ack_taken(fs_rt *rt, fs_stream *s)
{
    /* noack: handed-out events live in `open` until the agent acknowledges each. */
    if (!s->manual)
        for (size_t i = s->nacked; i < s->ntaken; i++) fs_event_ack(rt, s->taken[i]);
    s->ntaken = s->nacked = 0;
}

int fs_stream_open_add(fs_stream *s, fs_event *e)
{
    if (s->nopen == s->capopen) {
        size_t cap = s->capopen ? s->capopen * 2 : 256;
        fs_event **o = realloc(s->open, cap * sizeof *o);
        if (!o) return -1;
        s->open = o;
        s->capopen = cap;
    }
    s->open[s->nopen++] = e;
    return 0;
}

/* Removes e from a manual stream's open events; 0 if it was there. */
int fs_stream_open_remove(fs_stream *s, const fs_event *e)
{
    for (size_t i = 0; i < s->nopen; i++) {
        if (s->open[i] != e) continue;
        memmove(&s->open[i], &s->open[i + 1], (s->nopen - i - 1) * sizeof *s->open);
        s->nopen--;
        return 0;
    }
    return -1;
}

int fs_stream_ack_event(fs_rt *rt, fs_stream *s, fs_event *e)
{
    if (fs_stream_open_remove(s, e)) return -1;
    fs_event_ack(rt, e);
    return 0;
}

void fs_agent_close(fs_rt *rt, fs_agent *a)
{
    if (a->closed) return;
    a->closed = 1;
    while (a->qlen) {
        fs_event *e = a->q[a->qhead];
        a->qhead = (a->qhead + 1) % a->qcap;
        a->qlen--;
        rt->queued--;
        rt->queued_bytes -= fs_event_bytes(e);
        fs_event_ack(rt, e);
    }
    for (int i = 0; i < a->nstreams; i++) {
        fs_stream *s = a->streams[i];
        fs_stream_ack_taken(rt, s);
        /* noack events nobody will acknowledge now: release their memory. */
        for (size_t k = 0; k < s->nopen; k++) fs_event_release(rt, s->open[k]);
        s->nopen = 0;
    }
}

/* A stop whose deadline passed with this agent still mid-event (or an agent
 * freed unfinished): what it holds (queued, taken by the coroutine that was
 * killed, noack events never acknowledged) is let go without an acknowledgement, so those offsets stay
 * uncommitted for the next owner, and the consumer can be destroyed (librdkafka
 * waits for every message it handed out before its threads end). */
void fs_agent_release_held(fs_rt *rt, fs_agent *a)
{
    while (a->qlen) {
        fs_event *e = a->q[a->qhead];
        a->qhead = (a->qhead + 1) % a->qcap;
        a->qlen--;
        rt->queued--;
        rt->queued_bytes -= fs_event_bytes(e);
        fs_event_release(rt, e);
    }
    for (int i = 0; i < a->nstreams; i++) {
        fs_stream *s = a->streams[i];
        if (!s->manual)
            for (size_t k = s->nacked; k < s->ntaken; k++) fs_event_release(rt, s->taken[k]);
        s->ntaken = s->nacked = 0;
        s->pos = s->nbuf = 0;
        for (size_t k = 0; k < s->nopen; k++) fs_event_release(rt, s->open[k]);
        s->nopen = 0;
    }
}

void fs_agent_free(fs_rt *rt, fs_agent *a, lua_State *L)
{
    fs_agent_release_held(rt, a);
    for (int i = 0; i < a->nstreams; i++) {
        fs_stream *s = a->streams[i];
        fs_unref(L, s->lua_ref);
        free(s->open);
        free(s->taken);
        free(s);
    }
    free(a->streams);
    free(a->q);
    free(a->name);
    free(a);
}

void fs_wake_streams(fs_rt *rt)
{
    /* Parked coroutines (asks, channel readers) see the worker stopping too. */
    fs_sched_unpark_all(&rt->sched);
    for (int i = 0; i < rt->nagents; i++) {
        fs_agent *a = rt->agents[i];
        for (int j = 0; j < a->nstreams; j++) {
            fs_stream *s = a->streams[j];
            if (s->waiter) {
                fs_co *co = s->waiter;
                s->waiter = NULL;
                    fs_sched_ready(co);
            }
        }
    }
}
