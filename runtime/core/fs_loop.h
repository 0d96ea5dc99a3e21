/* fs_loop: the worker's single-threaded event loop.
 *
 * epoll over file descriptors (librdkafka queue wake-ups, signalfd, later
 * inotify and HTTP) plus a binary heap of timers. The clock is either the
 * monotonic clock or, for fstream.testing, a fake clock that only moves when
 * fs_loop_advance is called. Timers and I/O handlers never run Lua: they mark
 * coroutines ready and the runtime resumes them afterwards.
 *
 * The layers above register what they need done on each turn of the loop
 * (as Redis' ae has its before-sleep hook) instead of the loop's owner calling
 * every subsystem by name: per-iteration hooks, and sleep limits that say how
 * long the loop may wait (0 while a subsystem has work queued). One turn,
 * fs_loop_run_once: wait (bounded by timers and limits) and run I/O handlers,
 * FS_LOOP_AFTER_IO hooks, due timers, FS_LOOP_AFTER_TIMERS hooks. */
#ifndef FS_LOOP_H
#define FS_LOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct fs_timer fs_timer;
typedef struct fs_io fs_io;

struct fs_timer {
    int64_t when;    /* loop clock, milliseconds */
    size_t heap_idx; /* 0 while not armed, else position + 1 */
    uint64_t seq;    /* FIFO order among timers due at the same millisecond */
    void (*cb)(fs_timer *t);
    void *data;
};

struct fs_io {
    int fd;
    void (*cb)(fs_io *io, uint32_t events);
    void *data;
};

/* A registered per-iteration hook or sleep limit (see fs_loop_hook). */
typedef struct fs_hook {
    int phase, order;
    void (*fn)(void *data);
    int64_t (*limit)(void *data);
    void *data;
} fs_hook;

/* Ownership: the loop owns its heap and hook array, not the timers, I/O
 * records or hook data registered with it (they must outlive their
 * registration). */
typedef struct fs_loop {
    int epfd;
    int fake_clock;
    int64_t fake_now;
    fs_timer **heap;
    size_t nheap, capheap;
    uint64_t seq;
    fs_hook *hooks; /* sorted by (phase, order), registration order among equals */
    size_t nhooks, caphooks;
} fs_loop;

int fs_loop_init(fs_loop *l, int fake_clock);
void fs_loop_close(fs_loop *l);

/* Milliseconds on the loop's clock (monotonic, or fake). */
int64_t fs_loop_now(const fs_loop *l);
/* Moves the fake clock to `to` (never backwards). */
void fs_loop_set_fake_now(fs_loop *l, int64_t to);

/* Arms (or re-arms) t to fire `delay_ms` from now. t must outlive its arming. */
int fs_timer_start(fs_loop *l, fs_timer *t, int64_t delay_ms);
void fs_timer_stop(fs_loop *l, fs_timer *t);
static inline int fs_timer_active(const fs_timer *t)
{
    return t->heap_idx != 0;
}

/* Milliseconds until the earliest timer is due (0 if overdue), or -1 if none. */
int64_t fs_loop_next_timeout(const fs_loop *l);
/* Time of the earliest armed timer, or INT64_MAX. */
int64_t fs_loop_next_when(const fs_loop *l);
/* Fires every timer due at or before `now`; returns how many fired. */
int fs_loop_run_timers(fs_loop *l, int64_t now);

int fs_io_add(fs_loop *l, fs_io *io, uint32_t events);
int fs_io_mod(fs_loop *l, fs_io *io, uint32_t events);
void fs_io_del(fs_loop *l, fs_io *io);
/* Waits up to timeout_ms (-1: forever) and dispatches I/O handlers. Returns
 * the number of handlers run, or -1 on error other than EINTR. */
int fs_loop_poll(fs_loop *l, int timeout_ms);

/* Per-iteration hooks: fn(data) runs once per fs_loop_run_once, in `phase`
 * (FS_LOOP_AFTER_IO: after I/O handlers, before timers; FS_LOOP_AFTER_TIMERS:
 * after timers), by ascending `order`, then registration order. A hook may
 * not register or remove hooks. -1 when out of memory. */
enum { FS_LOOP_AFTER_IO = 0, FS_LOOP_AFTER_TIMERS = 1 };
int fs_loop_hook(fs_loop *l, int phase, int order, void (*fn)(void *data), void *data);
/* Sleep limits: limit(data) returns how long the loop may wait for I/O in ms:
 * 0 = work is queued (do not sleep), -1 = no limit. */
int fs_loop_limit(fs_loop *l, int64_t (*limit)(void *data), void *data);
/* Removes every hook and limit registered with this data pointer. */
void fs_loop_unhook(fs_loop *l, void *data);
/* How long the next turn may wait: the earliest timer, every limit and
 * max_ms (-1: none) taken together; -1 means "until I/O". */
int64_t fs_loop_sleep_ms(const fs_loop *l, int64_t max_ms);
/* One turn of the loop (see above), waiting at most max_ms for I/O.
 * -1 when epoll_wait failed (the hooks and timers still ran). */
int fs_loop_run_once(fs_loop *l, int64_t max_ms);

#endif
