/* fs_worker: the worker layer — the loop and lifecycle of one worker
 * (fs_runtime.c) and its side of the transport (fs_worker.c): the callbacks
 * registered on the transport, start-up, polling with back-pressure, close.
 * Calls every layer below; only the Lua bindings and the app call it. */
#ifndef FS_WORKER_H
#define FS_WORKER_H

#include "fs_rt.h"
#include "fs_signal.h"

/* fs_worker.c, the worker's side of the transport (fs_transport.h declares
 * the transport itself). */
/* Opens the worker's transport: librdkafka for broker (memory:// or
 * kafka://...), the in-memory log when broker is NULL. Registers the worker's
 * callbacks; sets rt->tp, rt->broker, rt->embedded. instance_id: the group
 * consumer's group.instance.id (static membership), NULL for none, "auto" for
 * "<host name>-<slot id>" with the slot of the data directory that exactly-once
 * uses too (taken here: it stays this process's). assignor: the group
 * consumer's partition assignor (fs_kafka_new), NULL for the default. */
int fs_rt_open_transport(fs_rt *rt, const char *broker, const char *instance_id,
                         const char *assignor, char *err, size_t errlen);
/* Resolves the topics, holds what the worker holds from the start, runs the
 * agents' first steps and subscribes. */
int fs_worker_start(fs_rt *rt, char *err, size_t errlen);
/* The loop's turn of the transport: revocations, back-pressure, deliveries,
 * fetching. Returns how many messages it dispatched. */
int fs_worker_poll(fs_rt *rt);
/* Learns the partition count of each topic from the broker's metadata, creating
 * missing ones with their `partitions` first (bounded: 10 s for the metadata,
 * 10 s more for created topics to appear). Blocks: start-up and reloads only. */
int fs_worker_resolve(fs_rt *rt, fs_topic **ts, int n, char *err, size_t errlen);
void fs_worker_close(fs_rt *rt);
/* After a reload, or when an agent added a topic at run time (group_by inside
 * the agent): producer handles for new topics, create them, subscribe to what
 * the agents read. Returns 1 when the subscription changed (the group
 * rebalances), 0 when not, -1 on error. */
int fs_worker_rebind(fs_rt *rt, char *err, size_t errlen);
/* Creates the topics declared since the last call and opens their producer
 * handles, without touching the subscription. */
int fs_worker_open_topics(fs_rt *rt, char *err, size_t errlen);

/* fstream.testing's send into the in-memory log (old form of
 * fs_memlog_append_external; does not take hdrs). */
int fs_memlog_append(fs_rt *rt, fs_topic *t, int32_t partition, const void *key, size_t klen,
                     const void *val, size_t vlen, rd_kafka_headers_t *hdrs, int64_t ts_ms,
                     int external, int32_t *part_out, int64_t *offset_out);

/* fs_runtime.c: the worker's loop and lifecycle */
/* Orders of the per-iteration hooks run after timers (fs_loop_hook): the
 * worker's, and those of the layers above it that register their own. */
enum { FS_ORDER_SCHED = 10, FS_ORDER_CHECKPOINT = 20, FS_ORDER_RELOAD = 30 };
int64_t fs_rt_wall_ms(fs_rt *rt);
int fs_rt_run(fs_rt *rt);
int fs_rt_run_until_idle(fs_rt *rt, int64_t max_ms);
void fs_rt_request_stop(fs_rt *rt, const char *why);
/* fs_rt_poll_signals: a received SIGTERM/SIGINT becomes a stop request of rt
 * (fs_signal.h; the worker registers itself there when its loop starts). */
void fs_rt_poll_signals(fs_rt *rt);


#endif
