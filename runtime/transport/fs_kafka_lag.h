/* fs_kafka_lag: the kafka transport's end-offset thread (transport layer,
 * private to fs_kafka.c). Consumer lag is a partition's end offset minus the
 * committed one; librdkafka 2.0.2 learns end offsets only from Fetch
 * responses, so while the worker has paused fetching (back-pressure: a slow
 * agent) the end offset it knows stands still and the lag it reports shrinks
 * as the agent works through its queue, while the real lag grows. This
 * thread asks the broker for the end offsets of the consumer's assignment
 * every few seconds, in one ListOffsets request per broker
 * (rd_kafka_offsets_for_times with "latest", which blocks: hence a thread;
 * the loop never blocks). The loop reads the newest answer (fs_lag_end). The
 * thread touches only the handle it was given (those calls are thread-safe)
 * and its own fields, under its mutex. */
#ifndef FS_KAFKA_LAG_H
#define FS_KAFKA_LAG_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

typedef struct fs_lag fs_lag;

/* Starts the thread on consumer rk (which must outlive fs_lag_free): a
 * request every interval_ms, each waiting at most timeout_ms. NULL when the
 * thread cannot start (the lag then comes from fetches only). */
fs_lag *fs_lag_new(rd_kafka_t *rk, int interval_ms, int timeout_ms);
/* The end offset last answered for topic[partition] (read_committed: the
 * last stable offset), or -1. */
int64_t fs_lag_end(fs_lag *l, const char *topic, int32_t partition);
/* Stops the thread: waits for a request under way (bounded by timeout_ms). */
void fs_lag_free(fs_lag *l);

#endif
