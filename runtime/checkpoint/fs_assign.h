/* fs_assign: what the worker does when the transport gives it partitions or
 * takes them away (layer: checkpoint). It drives each partition through its
 * states (fs_part.h); every wait is a step of the loop, none blocks it.
 *
 * Assignment (transport: assigned):
 *   1. each partition is taken (ASSIGNED); the group's committed offsets are
 *      asked of the transport, without waiting for the answer;
 *   2. for each partition number an input of tables has, the tables' partition
 *      is opened and recovered (fs_tables_hold); its input partitions are
 *      RECOVERING meanwhile;
 *   3. once the offsets are known and every recovery is over, each partition
 *      resumes at the later of its committed offset and the one its tables
 *      stored in LMDB (killed between the two commits: LMDB is ahead), becomes
 *      ACTIVE, and the transport starts fetching the whole assignment.
 * Revocation (transport: revoked):
 *   1. the partitions are FENCING: their queued events are dropped and agents
 *      start no more of them;
 *   2. wait (at most 10 s) until no agent is in the middle of one of their
 *      events: committing earlier would count that event twice when the next
 *      owner replays it;
 *   3. a checkpoint (FS_CKPT_REVOKE) commits their offsets, after the outputs
 *      and table writes of what they finished are delivered;
 *   4. their tables' partitions are closed, they are REVOKED, and the
 *      transport is told (unassign), which lets the rebalance go on.
 * A revocation that arrives while an assignment is in progress (or the other
 * way round) waits for it to finish: the transport sees one answer at a time.
 *
 * Eager and cooperative rebalances take the same steps (fs_transport.cooperative):
 * an eager one revokes everything, then assigns the new whole; a cooperative
 * one revokes or assigns only the partitions that change hands, and the
 * others keep being fetched and processed through it — the fence, the wait
 * and the table release touch only the revoked partitions (a table partition
 * goes when no input partition of its number stays), and the checkpoint
 * commits only their offsets (exactly-once: the one transaction, which holds
 * every partition's outputs, commits them all, as a periodic one would).
 * Lost partitions (the session expired; fs_transport_cb.revoked's lost) are
 * let go of without a checkpoint: their offsets are not committed and their
 * tables' partitions are closed without writing; under exactly-once the open
 * transaction, which holds what was done for them, is aborted by a reset.
 *
 * Ownership: an fs_assign belongs to its runtime (fs_rt.assign) and lives as
 * long as it; it points to the runtime, its transport and its checkpoint,
 * which outlive it. Partition lists given to it are copied. */
#ifndef FS_ASSIGN_H
#define FS_ASSIGN_H

#include <stdint.h>

#include "fs_checkpoint.h"
#include "fs_transport.h"

typedef struct fs_rt fs_rt;
typedef struct fs_assign fs_assign;

fs_assign *fs_assign_new(fs_rt *rt, fs_transport *tp, fs_ckpt *ck);
void fs_assign_free(fs_assign *a);

/* Transport callbacks (fs_transport_cb.assigned/.revoked/.committed), routed
 * here by the worker. */
void fs_assign_on_assigned(fs_assign *a, const fs_tplist *parts);
void fs_assign_on_revoked(fs_assign *a, const fs_tplist *parts, int lost);
void fs_assign_on_committed(fs_assign *a, void *ctx, const fs_tplist *offsets, int err);

/* Queues a reset of every held partition to its last committed state (after
 * an assignment or revocation in progress): hold agents, abort the open
 * transaction (exactly-once), fence, let agents finish the event in hand,
 * release the tables' partitions without writing, revoke, open the next
 * transaction, release the hold, and assign the partitions again through the
 * normal path (committed offsets, tables re-held and replayed). Logged at
 * warn with what failed and why (what: "periodic checkpoint", "a test"...).
 * Registered with the checkpoint as its failure handler. */
void fs_assign_reset(fs_assign *a, const char *what, const char *why);

/* Advances an assignment, revocation or reset in progress; the loop calls it on
 * every turn. */
void fs_assign_poll(fs_assign *a);
/* An assignment or revocation is in progress (a reload waits for it). */
int fs_assign_busy(const fs_assign *a);
/* A revocation or reset waits for agents: the loop should look again soon. */
int fs_assign_revoking(const fs_assign *a);
/* Nothing may be fetched now: a reset, or a revocation of every partition
 * held (their events are stale). A revocation of some (cooperative) lets the
 * others be fetched. */
int fs_assign_stops_fetching(const fs_assign *a);
/* The worker is closing: no agent runs again. Completes a revocation in
 * progress at once, waiting on the transport at most max_ms; an assignment
 * still recovering is dropped. */
void fs_assign_finish(fs_assign *a, int64_t max_ms);
/* The stop must be over by `until` (loop clock): the revocation the
 * transport reports while it closes waits at most until then too. */
void fs_assign_close_by(fs_assign *a, int64_t until);

#endif
