/* fs_part: the life of one input partition on this worker, and which of its
 * offsets may be committed (layer: partitions).
 *
 * A partition goes through these states; only the functions named on an arrow
 * move it, and nothing else writes `state`:
 *
 *   REVOKED ──fs_part_take──▶ ASSIGNED ──fs_part_recover──▶ RECOVERING
 *      ▲   (the transport gave it:       (its tables' partition replays
 *      │    asking where it resumes)      the changelog; nothing fetched)
 *      │                                   │
 *      │               fs_part_activate    ▼  (ASSIGNED goes there directly
 *      │           ┌──────────────────▶ ACTIVE    when it has no tables)
 *      │           │                 (fetched; events reach agents)
 *      │   fs_part_restart               │ fs_part_fence
 *      │   (a reload swapped versions)   ▼
 *      │           └─────────────────  FENCING
 *      └──────fs_part_revoke────────  (revoked, or a reload: agents finish
 *                                      the events in hand and start no more)
 *
 * fs_part_assign is the shortcut REVOKED -> ACTIVE used where a partition has
 * no recovery to wait for (the in-memory transport). fs_part_revoke is valid
 * from any state (a revocation of an assignment still recovering, a stop).
 *
 * Acknowledgement ring: every delivered event takes a slot (its offset and how
 * many agents still hold it) in delivery order. The committable offset is the
 * oldest slot still pending, or the offset after the last delivered event when
 * none is: a commit never skips an event some agent has not finished. Each
 * assignment or revocation bumps `gen`, so acknowledgements of events from an
 * earlier life of the partition are ignored.
 *
 * Ownership: an fs_part is owned by its topic (fs_topic.parts) and lives as
 * long as the runtime; `topic` points to its owner. The ring's storage is
 * owned here (fs_part_free). */
#ifndef FS_PART_H
#define FS_PART_H

#include <stdint.h>

#include "fs_vec.h"

typedef struct fs_topic fs_topic;
typedef struct fs_part fs_part;

enum fs_part_state {
    FS_PART_REVOKED = 0,
    FS_PART_ASSIGNED,
    FS_PART_RECOVERING,
    FS_PART_ACTIVE,
    FS_PART_FENCING,
};

struct fs_part_slot {
    int64_t offset;
    int32_t pending; /* agents that still hold the event */
};

struct fs_part {
    fs_topic *topic;
    int32_t id;
    int state;    /* enum fs_part_state */
    uint32_t gen; /* bumped on assign/revoke; events of an older generation are stale */
    FS_RING(struct fs_part_slot) ring;
    uint64_t rbase;    /* sequence number of the ring's first slot */
    int64_t next;      /* offset after the last delivered event, -1 if none yet */
    int64_t committed; /* last committed offset, -1 if none */
    int64_t snap;      /* committable offset captured by the running checkpoint */
    int64_t delivered; /* events delivered since assignment (stats) */
};

fs_part *fs_part_new(fs_topic *t, int32_t id); /* REVOKED; NULL when out of memory */
void fs_part_free(fs_part *p);

/* Transitions (see the diagram above). committed: the offset the group has
 * for the partition, -1 when none. */
void fs_part_take(fs_part *p);
void fs_part_recover(fs_part *p);
void fs_part_activate(fs_part *p, int64_t committed);
void fs_part_assign(fs_part *p, int64_t committed);
void fs_part_fence(fs_part *p);
void fs_part_restart(fs_part *p); /* forgets events in flight; fetching restarts */
void fs_part_revoke(fs_part *p);

/* Held by this worker: anything but REVOKED. */
static inline int fs_part_held(const fs_part *p)
{
    return p && p->state != FS_PART_REVOKED;
}
/* Its events may reach agents (a revoked or fencing partition's are stale). */
static inline int fs_part_active(const fs_part *p)
{
    return p && p->state == FS_PART_ACTIVE;
}
/* Held and no longer taking events: agents finish what they hold. */
static inline int fs_part_fencing(const fs_part *p)
{
    return p && p->state == FS_PART_FENCING;
}
/* Fetched from the transport: its offsets mean something (ACTIVE or FENCING). */
static inline int fs_part_consuming(const fs_part *p)
{
    return p && (p->state == FS_PART_ACTIVE || p->state == FS_PART_FENCING);
}

/* A delivered event at `offset` that `pending` agents will acknowledge; *seq
 * names it for fs_part_ack. -1 when out of memory (nothing changed). */
int fs_part_track(fs_part *p, int64_t offset, int32_t pending, uint64_t *seq);
/* One agent finished the event (gen, seq) of this partition. */
static inline void fs_part_ack(fs_part *p, uint32_t gen, uint64_t seq)
{
    if (gen != p->gen || seq < p->rbase || seq >= p->rbase + p->ring.len) return;
    fs_ring_at(&p->ring, seq - p->rbase).pending--;
    while (p->ring.len && fs_ring_at(&p->ring, 0).pending <= 0) {
        (void)fs_ring_shift(&p->ring);
        p->rbase++;
    }
}
int64_t fs_part_committable(const fs_part *p);

#endif
