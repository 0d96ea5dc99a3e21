/* fs_stream_cursor: the agents' positions in their streams' buffers, and
 * what follows from them — which taken events are finished (acknowledged
 * before a checkpoint snapshots offsets), whether an agent is in the middle
 * of an event of a revoking partition, and fencing (dropping buffered events
 * of revoked partitions that no agent started).
 *
 * Partitions layer, beside fs_stream.c (whose struct fs_stream holds the
 * cursor): no Lua here. The buffer itself belongs to whoever fills it (the
 * Lua bindings, fs_lua_stream.c); when a fence drops entries, the owner moves
 * its own through the fs_stream.move callback it registered. */
#include <string.h>

#include "fs_rt.h"

void fs_sync_acks(fs_rt *rt)
{
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (s->ntaken <= s->nacked || s->manual) continue;
            /* The event at the cursor is in progress; everything before it is finished. */
            size_t done = s->pos > 1 ? s->pos - 1 : 0;
            if (done > s->ntaken) done = s->ntaken;
            for (; s->nacked < done; s->nacked++) fs_event_ack(rt, s->taken[s->nacked]);
        }
    }
}

/* Removes from a stream's buffer the events after the cursor that belong to
 * partitions being revoked (the agent has not started them); they are
 * released here and will be delivered to the partition's next owner. The
 * buffer's owner moves its entries (s->move, with ctx). */
static void drop_revoked(fs_rt *rt, fs_stream *s, void *ctx)
{
    size_t n = s->nbuf, i = s->pos;
    if (n > s->ntaken) n = s->ntaken;
    if (i > n) i = n;
    size_t w = i;
    for (size_t j = i + 1; j <= n; j++) {
        fs_event *e = s->taken[j - 1];
        if (!fs_part_active(e->part)) {
            if (s->manual) fs_stream_open_remove(s, e);
            fs_event_release(rt, e);
            continue;
        }
        w++;
        if (w != j) {
            s->taken[w - 1] = e;
            if (s->move) s->move(s, j, w, ctx);
        }
    }
    /* An event that failed to decode sits after the buffer's entries: keep it. */
    size_t tail = s->ntaken - n;
    if (tail && w != n) memmove(&s->taken[w], &s->taken[n], tail * sizeof *s->taken);
    s->ntaken = w + tail;
    s->nbuf = w;
}

void fs_stream_fence_step(fs_rt *rt, fs_stream *s, void *ctx)
{
    for (; !s->manual && s->nacked < s->pos && s->nacked < s->ntaken; s->nacked++)
        fs_event_ack(rt, s->taken[s->nacked]);
    drop_revoked(rt, s, ctx);
}

void fs_fence_streams(fs_rt *rt, int on)
{
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (!s->move) continue; /* never bound: nothing was taken */
            s->fence = on;
            if (!on) drop_revoked(rt, s, NULL);
        }
    }
}

int fs_streams_clear(fs_rt *rt)
{
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            /* A stream whose reader died has nobody who could finish an event. */
            if (!s->reader) continue;
            for (size_t k = 0; k < s->nopen; k++)
                if (fs_part_fencing(s->open[k]->part)) return 0; /* not acknowledged yet */
            if (s->ntaken == 0 || s->manual) continue;
            /* The event at the cursor is in progress unless already acknowledged. */
            size_t pos = s->pos;
            if (pos >= 1 && pos <= s->ntaken && pos > s->nacked && fs_part_fencing(s->taken[pos - 1]->part))
                return 0;
        }
    }
    return 1;
}

/* ---- the hold (exactly-once checkpoints, a reset) ----
 * A checkpoint under exactly-once must cut between events: an event whose
 * outputs are in the transaction but whose offset is not (or the other way
 * round) would be lost or doubled. The hold stops each agent at its next
 * event boundary; the stream bindings test rt->hold once per event and wait
 * on their stream (s->waiter) while it is set, so releasing it wakes them the
 * way new events do. */
void fs_hold_agents(fs_rt *rt, int on)
{
    if (rt->hold == on) return;
    rt->hold = on;
    if (on) return;
    /* Only the readers the hold stopped: an idle worker's checkpoints (every
     * 0.1 s under exactly-once) wake nobody. */
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (!s->held) continue;
            s->held = 0;
            if (s->waiter) {
                fs_co *co = s->waiter;
                s->waiter = NULL;
                fs_sched_ready(co);
            }
        }
    }
}

/* Whether coroutine id is still alive (a close pass whose coroutine died is over). */
static int co_alive(fs_rt *rt, int id)
{
    for (fs_co *co = rt->sched.live; co; co = co->next)
        if (co->id == id) return co->state != FS_CO_DEAD;
    return 0;
}

int fs_window_pass(fs_rt *rt, int co_id, int on)
{
    if (co_id <= 0) return 0; /* not a coroutine: it cannot stop half-way */
    if (on) return fs_vec_push(&rt->passes, co_id);
    for (size_t i = 0; i < rt->passes.len; i++)
        if (rt->passes.items[i] == co_id) {
            fs_vec_remove(&rt->passes, i);
            break;
        }
    return 0;
}

int fs_streams_quiet(fs_rt *rt)
{
    for (size_t i = 0; i < rt->passes.len;) {
        if (co_alive(rt, rt->passes.items[i])) return 0;
        fs_vec_remove(&rt->passes, i);
    }
    for (int a = 0; a < rt->nagents; a++) {
        fs_agent *ag = rt->agents[a];
        for (int j = 0; j < ag->nstreams; j++) {
            fs_stream *s = ag->streams[j];
            if (!s->reader || s->manual || s->ntaken == 0) continue;
            size_t pos = s->pos;
            if (pos >= 1 && pos <= s->ntaken && pos > s->nacked) return 0;
        }
    }
    return 1;
}
