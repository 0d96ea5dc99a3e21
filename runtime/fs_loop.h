/* fs_loop: the worker's single-threaded event loop.
 *
 * epoll over file descriptors (librdkafka queue wake-ups, signalfd, later
 * inotify and HTTP) plus a binary heap of timers. The clock is either the
 * monotonic clock or, for fstream.testing, a fake clock that only moves when
 * fs_loop_advance is called. Timers and I/O handlers never run Lua: they mark
 * coroutines ready and the runtime resumes them afterwards. */
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

typedef struct fs_loop {
    int epfd;
    int fake_clock;
    int64_t fake_now;
    fs_timer **heap;
    size_t nheap, capheap;
    uint64_t seq;
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

#endif
