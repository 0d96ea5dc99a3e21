/* fs_kafka_members: the consumer group as every member sees it (transport
 * layer). Kafka's group protocol tells a member its own partitions only;
 * standby replicas (fs_standby, state layer) need everyone's. librdkafka
 * 2.0.2 describes a group only through the blocking rd_kafka_list_groups
 * (ListGroups + DescribeGroups: each member's id and its raw consumer-protocol
 * assignment), and the loop never blocks, so the request runs on a thread of
 * its own, like fs_kafka_meta's topic listing. The loop asks (fs_members_ask)
 * and later reads the newest answer (fs_members_read). The thread touches
 * only the two handles it was given (thread-safe calls) and its own fields,
 * under its mutex. */
#ifndef FS_KAFKA_MEMBERS_H
#define FS_KAFKA_MEMBERS_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

typedef struct fs_members fs_members;

/* One member of the group and the partitions its assignment names. */
typedef struct fs_member {
    char *id; /* member id (static members: group.instance.id + '-' + uuid) */
    int n;
    char **topics;    /* n entries, one allocation each */
    int32_t *parts;   /* n entries */
} fs_member;

/* A description of the group: members sorted by id. */
typedef struct fs_group_view {
    char *self;  /* this worker's member id ("" before it joined) */
    char *state; /* the group's state ("Stable", "PreparingRebalance", ...) */
    int n;
    fs_member *members;
} fs_group_view;

void fs_group_view_free(fs_group_view *v);

/* Starts the thread. rk asks the cluster (any handle of it), consumer is the
 * group's consumer (its member id); both must outlive fs_members_free. NULL
 * and err on failure. */
fs_members *fs_members_new(rd_kafka_t *rk, rd_kafka_t *consumer, const char *group,
                           int timeout_ms, char *err, size_t errlen);
/* Asks for a new description; nothing when one is under way. */
void fs_members_ask(fs_members *m);
/* Moves the newest description into *out (the caller frees it) when there is
 * one newer than `seen`; returns its number (0: none yet; the same as seen:
 * nothing new). -1 when the last request failed (err says why). */
long fs_members_read(fs_members *m, long seen, fs_group_view *out, char *err, size_t errlen);
/* Stops the thread, waiting for a request under way (bounded by timeout_ms). */
void fs_members_free(fs_members *m);

#endif
