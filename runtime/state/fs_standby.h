/* fs_standby: standby replicas — warm, read-only copies of table partitions
 * this worker does not own (the app's standby_replicas = N), kept current by
 * tailing their changelogs, so that taking such a partition over replays
 * only the changelog's tail (fs_recovery starts from the copy's stored
 * changelog offset).
 *
 * Who keeps which copy: the consumer group does not know about standbys, so
 * every worker derives the same answer from the group's description
 * (fs_kafka_members: members sorted by member id, each with its assignment).
 * The owner of partition p is the member whose assignment holds partition p
 * of a topic whose events write tables; its standbys are the next N members
 * after it in that order (cyclically, N at most members - 1). Recomputed
 * every second from a fresh description, which follows every rebalance; a
 * description of a group that is not "Stable", or one in which p has no
 * owner (its owner died, the group has not moved it yet), changes nothing:
 * the copies kept stay and keep tailing. Nothing blocks the loop: the
 * description is asked on the transport's thread, records arrive on a
 * consumer queue's eventfd and are applied a bounded batch per step.
 *
 * A copy lives where the owner's files would (`<table dir>/<p>`), opened with
 * fs_store_open_standby: it never keeps owner.lock, so a worker sharing the
 * data directory that takes the partition is not held up, and the copy lets
 * go at its next write. Each batch is written with the changelog offset it
 * reaches and the input offsets its records name, as a replay writes them.
 *
 * Lifetimes: rt->standby, created by fs_standby_start, freed by
 * fs_standby_free (before the transport closes). It owns its consumer
 * ("<group>-standby", assign-only, read_committed), the describing thread,
 * its timers and the copies' stores. */
#ifndef FS_STANDBY_H
#define FS_STANDBY_H

#include <stdint.h>

#include "fs_rt.h"

/* Starts keeping standby copies when the app asks for them and the transport
 * has a group (a Kafka cluster). 0, or -1 (fatal set). */
int fs_standby_start(fs_rt *rt);
/* This worker takes partition p: its copies close first (their stored
 * changelog offsets are where the replay starts). */
void fs_standby_drop(fs_rt *rt, int32_t p);
void fs_standby_free(fs_rt *rt);

#endif
