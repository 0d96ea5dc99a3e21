/* fs_kafka_meta: the kafka transport's topic-listing thread (transport layer,
 * private to fs_kafka.c). Pattern topics need the broker's list of topics
 * while the worker runs; librdkafka 2.0.2 gives it only through the blocking
 * rd_kafka_metadata (all topics), and the loop never blocks, so the request
 * runs here. The loop asks (fs_meta_ask) and later reads the newest listing
 * (fs_meta_read): no wake-up, the reader polls at its own pace. The thread
 * touches nothing but the handle it was given (rd_kafka_metadata is
 * thread-safe) and its own fields, under its mutex. */
#ifndef FS_KAFKA_META_H
#define FS_KAFKA_META_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

typedef struct fs_meta fs_meta;

/* Starts the thread on handle rk (which must outlive fs_meta_free); each
 * request waits at most timeout_ms for the broker. NULL on failure. */
fs_meta *fs_meta_new(rd_kafka_t *rk, int timeout_ms, char *err, size_t errlen);
/* Asks for a new listing; nothing when one is already under way. */
void fs_meta_ask(fs_meta *m);
/* Calls fn(data, name, partitions) for each topic of the newest listing,
 * after waiting up to wait_ms for a first one (0: no wait; start-up only
 * waits). Returns the listing's number (1, 2, ...: a new number is a newer
 * listing), 0 when there is none yet, -1 when the last request failed and
 * err says why (the listing before it, if any, is still handed to fn). */
long fs_meta_read(fs_meta *m, int wait_ms, void (*fn)(void *data, const char *name, int partitions),
                  void *data, char *err, size_t errlen);
/* Stops the thread: waits for a request under way (bounded by timeout_ms). */
void fs_meta_free(fs_meta *m);

#endif
