/* fs_kafka: what the librdkafka transport offers beyond fs_transport_ops —
 * consumers of its cluster for the state layer's changelog readers, until
 * the transport has a reader operation. Transport layer. */
#ifndef FS_KAFKA_H
#define FS_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "fs_loop.h"
#include "fs_transport.h"

/* An assign-only consumer of tp's cluster (read_committed, partition EOF
 * reported, 50 ms fetch wait) in consumer group `group`. NULL and a message
 * when tp is not the librdkafka transport or the client cannot be made. */
rd_kafka_t *fs_kafka_reader(fs_transport *tp, const char *group, char *err, size_t errlen);
/* The group's consumer (standby replicas ask for its member id), or NULL
 * when tp is not the librdkafka transport or has no group (memory://
 * assigns itself every partition). */
rd_kafka_t *fs_kafka_group_consumer(fs_transport *tp);
/* Calls cb(io) on the loop when q has something (an eventfd written by
 * librdkafka, registered with loop; *fd is closed by the caller). */
int fs_kafka_watch_queue(fs_loop *loop, rd_kafka_queue_t *q, int *fd, fs_io *io,
                         void (*cb)(fs_io *, uint32_t), void *data);

#endif
