/* fs_part: a partition's states and its acknowledgement ring (see fs_part.h). */
#include "fs_part.h"

#include <stdlib.h>

fs_part *fs_part_new(fs_topic *t, int32_t id)
{
    fs_part *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->topic = t;
    p->id = id;
    p->state = FS_PART_REVOKED;
    p->next = -1;
    p->committed = -1;
    p->snap = -1;
    return p;
}

void fs_part_free(fs_part *p)
{
    if (!p) return;
    fs_ring_free(&p->ring);
    free(p);
}

/* A new life of the partition: what an earlier one tracked is forgotten, and
 * acknowledgements still on their way for it no longer match. */
static void forget(fs_part *p)
{
    p->gen++;
    p->rbase += p->ring.len;
    p->ring.head = p->ring.len = 0;
}

void fs_part_take(fs_part *p)
{
    forget(p);
    p->state = FS_PART_ASSIGNED;
    p->next = -1;
    p->committed = -1;
    p->snap = -1;
    p->delivered = 0;
}

void fs_part_recover(fs_part *p)
{
    if (p->state == FS_PART_ASSIGNED) p->state = FS_PART_RECOVERING;
}

void fs_part_activate(fs_part *p, int64_t committed)
{
    forget(p);
    p->state = FS_PART_ACTIVE;
    p->next = -1;
    p->committed = committed;
    p->snap = -1;
    p->delivered = 0;
}

void fs_part_assign(fs_part *p, int64_t committed)
{
    fs_part_activate(p, committed);
}

void fs_part_fence(fs_part *p)
{
    if (p->state == FS_PART_ACTIVE) p->state = FS_PART_FENCING;
}

void fs_part_restart(fs_part *p)
{
    if (p->state != FS_PART_ACTIVE && p->state != FS_PART_FENCING) return;
    forget(p);
    p->state = FS_PART_ACTIVE;
    p->next = -1;
    p->snap = -1;
}

void fs_part_revoke(fs_part *p)
{
    forget(p);
    p->state = FS_PART_REVOKED;
}

int fs_part_track(fs_part *p, int64_t offset, int32_t pending, uint64_t *seq)
{
    struct fs_part_slot s = {offset, pending};
    if (fs_ring_push(&p->ring, s)) return -1;
    *seq = p->rbase + p->ring.len - 1;
    p->next = offset + 1;
    p->delivered++;
    return 0;
}

int64_t fs_part_committable(const fs_part *p)
{
    if (p->ring.len) return fs_ring_at(&p->ring, 0).offset;
    return p->next;
}
