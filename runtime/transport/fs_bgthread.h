/* fs_bgthread: a thread that runs one blocking request at a time for the loop
 * (transport layer). librdkafka 2.0.2 answers some questions only through
 * blocking calls (all-topics metadata, a group's description, end offsets)
 * and the loop never blocks, so each of those runs on a thread of its own:
 * the loop asks (fs_bgthread_ask) and later reads the newest answer under
 * the thread's mutex, at its own pace. Users: fs_kafka_meta, fs_kafka_members
 * (asked), fs_kafka_lag (every interval).
 *
 * One request: `work(data)` runs outside the mutex (it may block; it must
 * touch only what the thread owns and thread-safe handles), then
 * `publish(data)` runs under the mutex and moves the answer to where readers
 * find it; waiters in fs_bgthread_wait are woken after it. An ask while a
 * request is asked for or under way is dropped: the next answer is new
 * enough. */
#ifndef FS_BGTHREAD_H
#define FS_BGTHREAD_H

#include <stddef.h>
#include <time.h>

typedef struct fs_bgthread fs_bgthread;

/* Starts the thread. interval_ms > 0: it also runs a request every
 * interval_ms (counted from the end of the previous wait); 0: only when
 * asked. what names the thread in the error ("cannot start the <what>
 * thread: ..."). data must outlive fs_bgthread_stop. NULL and err on
 * failure. */
fs_bgthread *fs_bgthread_start(const char *what, int interval_ms, void (*work)(void *data),
                               void (*publish)(void *data), void *data, char *err, size_t errlen);
/* Asks for a request; nothing when one is asked for or under way already. */
void fs_bgthread_ask(fs_bgthread *t);
/* The mutex publish runs under: readers hold it while they read the answer. */
void fs_bgthread_lock(fs_bgthread *t);
void fs_bgthread_unlock(fs_bgthread *t);
/* With the mutex held: waits for the next publish, the deadline (from
 * fs_bgthread_deadline) or the thread's stop. Returns 0 when woken (a
 * publish, or spuriously: the caller checks its condition again), -1 at the
 * deadline or when stopping. */
int fs_bgthread_wait(fs_bgthread *t, const struct timespec *until);
/* The deadline ms milliseconds from now, for fs_bgthread_wait. */
void fs_bgthread_deadline(struct timespec *until, int ms);
/* Stops the thread, waiting for a request under way (its work returns
 * first), and frees it. NULL: nothing. */
void fs_bgthread_stop(fs_bgthread *t);

#endif
