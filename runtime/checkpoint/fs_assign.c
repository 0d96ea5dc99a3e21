/* fs_assign: assignment and revocation, as steps of the loop (see fs_assign.h). */
#include "fs_assign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs_buf.h"
#include "fs_log.h"
#include "fs_rt.h"
#include "fs_table.h"
#include "fs_vec.h"

#define FS_REVOKE_WAIT_MS 10000

/* Steps of a revocation. */
enum { R_NONE = 0, R_FENCE, R_CHECKPOINT, R_CHECKPOINTING, R_RELEASE };

/* What the transport reported while another change was in progress. */
struct change {
    int assign; /* 1 assigned, 0 revoked */
    fs_tplist parts;
};

struct fs_assign {
    fs_rt *rt;
    fs_transport *tp;
    fs_ckpt *ck;
    /* the assignment in progress */
    int assigning;
    fs_tplist parts;   /* offsets: the committed ones once known, then where each resumes */
    int asking;        /* the committed offsets are not known yet */
    int holds;         /* table recoveries not over */
    int failed;        /* a recovery failed or was stopped: the assignment is never made */
    /* Their addresses mark our committed-offsets questions; alternating, so
     * that the answer to a dropped assignment's question is not taken for
     * the next one's. */
    char committed_tag[2];
    int asked;
    /* the revocation in progress */
    int revoke_step;
    fs_tplist revoke;
    int64_t revoke_deadline;
    FS_VEC(struct change) queue;
    fs_buf names;
};

fs_assign *fs_assign_new(fs_rt *rt, fs_transport *tp, fs_ckpt *ck)
{
    fs_assign *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->rt = rt;
    a->tp = tp;
    a->ck = ck;
    return a;
}

void fs_assign_free(fs_assign *a)
{
    if (!a) return;
    fs_tplist_free(&a->parts);
    fs_tplist_free(&a->revoke);
    for (size_t i = 0; i < a->queue.len; i++) fs_tplist_free(&a->queue.items[i].parts);
    fs_vec_free(&a->queue);
    fs_buf_free(&a->names);
    free(a);
}

int fs_assign_busy(const fs_assign *a)
{
    return a && (a->assigning || a->revoke_step != R_NONE);
}

int fs_assign_revoking(const fs_assign *a)
{
    return a && a->revoke_step != R_NONE;
}

/* "topic[p] topic[p] ..." for the logs, in a buffer that grows. */
static const char *names_of(fs_assign *a, const fs_tplist *l)
{
    fs_buf_reset(&a->names);
    for (int i = 0; i < l->len; i++) {
        char one[32];
        int n = snprintf(one, sizeof one, "[%d]", (int)l->items[i].partition);
        if ((i && fs_buf_addc(&a->names, ' ')) ||
            fs_buf_add(&a->names, l->items[i].topic, strlen(l->items[i].topic)) ||
            fs_buf_add(&a->names, one, (size_t)n))
            return "(too many to list: out of memory)";
    }
    if (fs_buf_addc(&a->names, 0)) return "(too many to list: out of memory)";
    return a->names.data;
}

static fs_part *part_of(fs_rt *rt, const fs_tp *tp)
{
    fs_topic *t = fs_topic_find(rt, tp->topic);
    return t ? fs_part_get(t, tp->partition) : NULL;
}

static int table_input(fs_rt *rt, const fs_tp *tp)
{
    fs_topic *t = fs_topic_find(rt, tp->topic);
    return t && t->table_input;
}

/* The first of the list's table inputs with partition number l->items[i]'s:
 * tables are held once per partition number. */
static int first_of_number(fs_rt *rt, const fs_tplist *l, int i)
{
    for (int j = 0; j < i; j++)
        if (l->items[j].partition == l->items[i].partition && table_input(rt, &l->items[j])) return 0;
    return 1;
}

static void next_change(fs_assign *a);
static void revoke_start(fs_assign *a, const fs_tplist *parts);

/* ---- assignment ---- */

/* Offsets known and tables recovered: fetching starts. */
static void assign_complete(fs_assign *a)
{
    fs_rt *rt = a->rt;
    if (!a->assigning || a->asking || a->holds > 0 || a->failed) return;
    for (int i = 0; i < a->parts.len; i++) {
        fs_tp *tp = &a->parts.items[i];
        fs_topic *t = fs_topic_find(rt, tp->topic);
        fs_part *p = t ? fs_part_get(t, tp->partition) : NULL;
        int64_t committed = tp->offset >= 0 ? tp->offset : -1;
        tp->offset = FS_OFFSET_INVALID; /* the transport starts from the committed one */
        /* LMDB may be ahead of the commit (killed between the two): resume there. */
        int64_t stored = t ? fs_tables_resume_offset(rt, t->name, tp->partition, committed) : -1;
        if (stored > committed) {
            fs_info("%s[%d]: resuming at %lld from local state (committed: %lld)", t->name,
                    (int)tp->partition, (long long)stored, (long long)committed);
            tp->offset = stored;
            committed = stored;
        }
        if (p) fs_part_activate(p, committed);
    }
    char err[256];
    rt->paused = 0; /* a new assignment starts unpaused (back-pressure) */
    if (a->tp->ops->assign(a->tp, &a->parts, err, sizeof err))
        fs_rt_fatal(rt, "could not start fetching the assigned partitions: %s", err);
    a->assigning = 0;
    fs_tplist_free(&a->parts);
    next_change(a);
}

static void held(void *data, int32_t p, int rc)
{
    fs_assign *a = data;
    (void)p;
    if (!a->assigning) return;
    /* A failure (fatal) or a stop: the worker stops, and the assignment waits
     * until fs_assign_finish drops it. */
    if (rc) a->failed = 1;
    a->holds--;
    assign_complete(a);
}

void fs_assign_on_committed(fs_assign *a, void *ctx, const fs_tplist *offsets, int err)
{
    if (ctx != &a->committed_tag[a->asked & 1] || !a->assigning || !a->asking) return;
    a->asking = 0;
    for (int i = 0; i < a->parts.len; i++) {
        fs_tp *tp = &a->parts.items[i];
        const fs_tp *c = err || !offsets ? NULL : fs_tplist_find(offsets, tp->topic, tp->partition);
        /* Unknown: resume where the group has it; a gap is then not reported. */
        tp->offset = c && !c->err ? c->offset : FS_OFFSET_INVALID;
    }
    assign_complete(a);
}

static void assign_start(fs_assign *a, const fs_tplist *parts)
{
    fs_rt *rt = a->rt;
    fs_tplist_free(&a->parts);
    if (fs_tplist_copy(&a->parts, parts)) {
        fs_rt_fatal(rt, "out of memory taking an assignment");
        return;
    }
    fs_info("assigned %d partitions: %s", parts->len, names_of(a, parts));
    a->assigning = 1;
    a->failed = 0;
    a->asking = 1;
    /* Held until every recovery below is asked for: done may come at once. */
    a->holds = 1;
    for (int i = 0; i < a->parts.len; i++) {
        fs_part *p = part_of(rt, &a->parts.items[i]);
        if (p) fs_part_take(p);
    }
    /* Where each partition resumes, so a gap (log start moved past it) is reported. */
    a->asked++;
    if (!a->parts.len || a->tp->ops->committed(a->tp, &a->parts, &a->committed_tag[a->asked & 1])) {
        a->asking = 0;
        for (int i = 0; i < a->parts.len; i++) a->parts.items[i].offset = FS_OFFSET_INVALID;
    }
    /* Tables follow their partitions: opened and recovered before any event
     * of the partition reaches an agent. */
    for (int i = 0; i < a->parts.len && !a->failed; i++) {
        fs_tp *tp = &a->parts.items[i];
        if (!table_input(rt, tp)) continue; /* forwarders' inputs, the leader topic */
        for (int j = 0; j < a->parts.len; j++)
            if (a->parts.items[j].partition == tp->partition && table_input(rt, &a->parts.items[j]))
                fs_part_recover(part_of(rt, &a->parts.items[j]));
        if (!first_of_number(rt, &a->parts, i)) continue;
        a->holds++;
        if (fs_tables_hold(rt, tp->partition, held, a)) {
            a->holds--;
            a->failed = 1;
        }
    }
    a->holds--;
    assign_complete(a);
}

/* The worker closes while tables still recover: their replays stop (LMDB
 * keeps what they wrote, and the next owner resumes from there). */
static void assign_drop(fs_assign *a)
{
    if (!a->assigning) return;
    a->assigning = 0;
    for (int i = 0; i < a->parts.len; i++) {
        fs_tp *tp = &a->parts.items[i];
        fs_part *p = part_of(a->rt, tp);
        if (table_input(a->rt, tp) && first_of_number(a->rt, &a->parts, i))
            fs_tables_release(a->rt, tp->partition);
        if (p) fs_part_revoke(p);
    }
    fs_tplist_free(&a->parts);
}

void fs_assign_on_assigned(fs_assign *a, const fs_tplist *parts)
{
    if (a->tp->holds_all) {
        /* Nothing to join, recover or resume: the worker held every
         * partition from the start (fs_worker_start). */
        for (int i = 0; i < parts->len; i++) {
            fs_part *p = part_of(a->rt, &parts->items[i]);
            if (p && !fs_part_held(p)) fs_part_assign(p, -1);
        }
        return;
    }
    /* A new assignment replaces one still waiting for its offsets or tables
     * (memory://'s self-assignment when the subscription changes meanwhile):
     * the transport was not answered yet, so nothing of the old one fetched. */
    if (a->assigning && a->revoke_step == R_NONE && !a->queue.len) assign_drop(a);
    /* An empty assignment is answered too (the group waits for it). */
    if (fs_assign_busy(a)) {
        struct change c = {1, {0}};
        if (fs_tplist_copy(&c.parts, parts) || fs_vec_push(&a->queue, c)) {
            fs_tplist_free(&c.parts);
            fs_rt_fatal(a->rt, "out of memory taking an assignment");
        }
        return;
    }
    assign_start(a, parts);
}

/* ---- revocation ---- */

static void revoke_checkpointed(void *data, int rc)
{
    fs_assign *a = data;
    (void)rc; /* a failed checkpoint said why; the partitions go anyway */
    if (a->revoke_step == R_CHECKPOINTING) a->revoke_step = R_RELEASE;
}

static void revoke_release(fs_assign *a)
{
    fs_rt *rt = a->rt;
    for (int i = 0; i < a->revoke.len; i++) {
        fs_tp *tp = &a->revoke.items[i];
        int seen = 0; /* tables are released once per partition number */
        for (int j = 0; j < i; j++) seen |= a->revoke.items[j].partition == tp->partition;
        if (!seen) fs_tables_release(rt, tp->partition);
        fs_part *p = part_of(rt, tp);
        if (p) {
            fs_part_drop_queued(rt, p);
            fs_part_revoke(p);
        }
    }
    fs_tplist_free(&a->revoke);
    a->revoke_step = R_NONE;
    a->tp->ops->unassign(a->tp);
    fs_info("revocation done");
    next_change(a);
}

/* One step of the revocation; returns 1 while it waits. */
static int revoke_advance(fs_assign *a)
{
    fs_rt *rt = a->rt;
    switch (a->revoke_step) {
    case R_FENCE:
        fs_ckpt_sync_acks(a->ck);
        if (!fs_ckpt_agents_clear(a->ck)) {
            /* Once the worker is closing no agent runs again: waiting would
             * hold the transport's close, which serves this revocation, forever. */
            if (fs_loop_now(&rt->loop) < a->revoke_deadline && !rt->stopped && !rt->closing &&
                !a->tp->closing)
                return 1;
            fs_warn("agents still busy with events of revoked partitions after 10 s; revoking "
                    "anyway (those events will be processed again by the next owner)");
        }
        fs_ckpt_fence(a->ck, 0); /* drops what agents had not started */
        a->revoke_step = R_CHECKPOINT;
        /* fall through */
    case R_CHECKPOINT:
        a->revoke_step = R_CHECKPOINTING;
        switch (fs_ckpt_start(a->ck, FS_CKPT_REVOKE, &a->revoke, revoke_checkpointed, a)) {
        case 1: /* the periodic checkpoint runs: this one follows it */
            a->revoke_step = R_CHECKPOINT;
            return 1;
        case -1:
            a->revoke_step = R_RELEASE;
            break;
        }
        if (a->revoke_step == R_CHECKPOINTING) return 1;
        /* fall through */
    case R_RELEASE:
        revoke_release(a);
        return 0;
    case R_CHECKPOINTING:
        return 1;
    default:
        return 0;
    }
}

static void revoke_start(fs_assign *a, const fs_tplist *parts)
{
    fs_rt *rt = a->rt;
    /* Agents may be in the middle of an event of these partitions (a table
     * write, a send, a sleep). Committing now would count that event twice
     * when the next owner replays it, so the revocation waits — the transport
     * holds the rebalance until unassign — while a fence stops agents from
     * starting further events of these partitions. */
    fs_info("revoking %d partitions: %s", parts->len, names_of(a, parts));
    fs_tplist_free(&a->revoke);
    if (fs_tplist_copy(&a->revoke, parts)) {
        fs_rt_fatal(rt, "out of memory revoking partitions");
        a->tp->ops->unassign(a->tp);
        return;
    }
    a->revoke_deadline = fs_loop_now(&rt->loop) + FS_REVOKE_WAIT_MS;
    for (int i = 0; i < parts->len; i++) {
        fs_part *p = part_of(rt, &parts->items[i]);
        if (!p) continue;
        fs_part_fence(p);
        fs_part_drop_queued(rt, p);
    }
    fs_ckpt_fence(a->ck, 1);
    a->revoke_step = R_FENCE;
    revoke_advance(a);
}

void fs_assign_on_revoked(fs_assign *a, const fs_tplist *parts)
{
    if (fs_assign_busy(a)) {
        struct change c = {0, {0}};
        if (fs_tplist_copy(&c.parts, parts) || fs_vec_push(&a->queue, c)) {
            fs_tplist_free(&c.parts);
            fs_rt_fatal(a->rt, "out of memory revoking partitions");
        }
    } else {
        revoke_start(a, parts);
    }
    /* Closing: the transport waits for the answer inside this call. */
    if (a->rt->closing || a->tp->closing) fs_assign_finish(a, 35000);
}

static void next_change(fs_assign *a)
{
    while (!fs_assign_busy(a) && a->queue.len) {
        struct change c = a->queue.items[0];
        fs_vec_remove(&a->queue, 0);
        if (c.assign) assign_start(a, &c.parts);
        else revoke_start(a, &c.parts);
        fs_tplist_free(&c.parts);
    }
}

void fs_assign_poll(fs_assign *a)
{
    if (a->revoke_step != R_NONE) revoke_advance(a);
}

void fs_assign_finish(fs_assign *a, int64_t max_ms)
{
    fs_rt *rt = a->rt;
    int64_t until = fs_loop_now(&rt->loop) + max_ms;
    for (;;) {
        assign_drop(a);
        if (a->revoke_step == R_NONE) {
            /* Queued assignments are not taken any more; queued revocations
             * still get their answer. */
            if (!a->queue.len) break;
            struct change c = a->queue.items[0];
            fs_vec_remove(&a->queue, 0);
            if (!c.assign) revoke_start(a, &c.parts);
            fs_tplist_free(&c.parts);
            continue;
        }
        a->revoke_deadline = 0;
        if (!revoke_advance(a)) continue;
        /* Waiting for a checkpoint (the running periodic one, or its own). */
        int64_t left = until - fs_loop_now(&rt->loop);
        fs_ckpt_drain(a->ck, left > 0 ? left : 0);
        if (a->revoke_step == R_CHECKPOINTING) a->revoke_step = R_RELEASE;
    }
}
