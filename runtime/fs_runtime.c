/* fs_runtime: the worker's main loop and lifecycle.
 *
 * One iteration: wait for I/O or the next timer, pull what librdkafka has for
 * us, fire due timers, resume every ready coroutine once, advance the
 * checkpoint. Stopping (SIGTERM/SIGINT): stop fetching, let agents finish the
 * events they hold, then flush outputs, commit and leave the group. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_rt.h"

#define FS_STOP_TIMEOUT_MS 30000
/* After the first SIGTERM/SIGINT the whole stop — agents (FS_STOP_TIMEOUT_MS),
 * final delivery and commit, leaving the group — must be over within this, or
 * the watch thread ends the process (exit code 1, nothing more committed). */
#define FS_STOP_HARD_LIMIT_S 75

/* The watch thread. In a worker, SIGTERM and SIGINT are blocked in every
 * thread (main.c, before librdkafka starts its own) and this thread takes them
 * with sigtimedwait. It never touches the runtime: it counts, wakes the loop
 * through an eventfd, and exits the process itself on a second signal — the
 * loop may be stuck (an agent that does not yield, a blocking call into
 * librdkafka) and could not read it. Every tick it also looks for a coroutine
 * that runs too long (fs_sched_watch). In-process (fstream.testing) it only
 * does the latter. */
#define FS_WATCH_TICK_MS 100

static struct {
    int started, take_signals;
    int efd;
    atomic_int received; /* SIGTERM/SIGINT so far */
    atomic_int last;     /* the last one's number */
    atomic_int stopping; /* the worker stops already: any signal exits at once */
    int handled;         /* loop side: signals already turned into a stop */
} sigs = {.efd = -1};

static void *watch_thread(void *arg)
{
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int64_t stop_at = 0;
    for (;;) {
        struct timespec tick = {0, FS_WATCH_TICK_MS * 1000000L};
        siginfo_t si;
        int sig = -1;
        if (sigs.take_signals) sig = sigtimedwait(&set, &si, &tick);
        else nanosleep(&tick, NULL);
        int64_t now = fs_sched_clock_ms();
        if (sig > 0) {
            if (stop_at || atomic_load(&sigs.stopping)) {
                fs_error("second %s: exiting at once without committing", strsignal(sig));
                _exit(128 + sig);
            }
            stop_at = now;
            atomic_store(&sigs.last, sig);
            atomic_fetch_add(&sigs.received, 1);
            uint64_t one = 1;
            if (write(sigs.efd, &one, sizeof one) < 0) {
                /* The loop also looks at `received` whenever it runs. */
            }
            fs_sched_watch(now, 0, 1); /* a coroutine that does not yield learns of the stop */
            continue;
        }
        if (stop_at && now - stop_at > FS_STOP_HARD_LIMIT_S * 1000) {
            fs_error("the stop did not finish within %d s: exiting now, without committing what "
                     "is not committed yet",
                     FS_STOP_HARD_LIMIT_S);
            _exit(1);
        }
        fs_sched_watch(now, stop_at ? stop_at + FS_STOP_TIMEOUT_MS : 0, 0);
    }
    return NULL;
}

static int watch_start(int take_signals)
{
    if (sigs.started) return 0;
    if (fs_sched_watch_init()) return -1;
    if (take_signals) {
        sigs.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (sigs.efd < 0) return -1;
    }
    sigs.take_signals = take_signals;
    /* The thread and the SIGURG handler live in this image. When it is the Lua
     * module (fstream_core.so), lua_close would unload it under the sleeping
     * thread (a crash at exit): keep it loaded for the life of the process.
     * (In the executable there is nothing to pin, and the lookup finds nothing.) */
    Dl_info self;
    if (dladdr(&sigs, &self) && self.dli_fname)
        (void)dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    /* The thread must not take the scheduler's poke, whatever the caller's mask. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGURG);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, watch_thread, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        if (sigs.efd >= 0) close(sigs.efd);
        sigs.efd = -1;
        return -1;
    }
    sigs.started = 1;
    return 0;
}

int fs_signals_start(void)
{
    return watch_start(1);
}

int fs_watch_start(void)
{
    return watch_start(0);
}

int fs_signals_stop_requested(void)
{
    return atomic_load(&sigs.received) > 0;
}

void fs_rt_poll_signals(fs_rt *rt)
{
    int n = atomic_load(&sigs.received);
    if (n == sigs.handled) return;
    sigs.handled = n;
    int sig = atomic_load(&sigs.last);
    fs_rt_request_stop(rt, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

int64_t fs_rt_wall_ms(fs_rt *rt)
{
    if (rt->loop.fake_clock) return rt->wall_offset_ms + fs_loop_now(&rt->loop);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

void fs_rt_fatal(fs_rt *rt, const char *fmt, ...)
{
    if (rt->fatal) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rt->fatal_msg, sizeof rt->fatal_msg, fmt, ap);
    va_end(ap);
    rt->fatal = 1;
}

void fs_rt_request_stop(fs_rt *rt, const char *why)
{
    if (rt->stopping) return;
    rt->stopping = 1;
    atomic_store(&sigs.stopping, 1);
    rt->stop_deadline = fs_loop_now(&rt->loop) + FS_STOP_TIMEOUT_MS;
    fs_info("stopping (%s): finishing in-flight events", why);
    fs_wake_streams(rt);
}

/* SIGHUP (signalfd): a reload, which needs the loop anyway. */
static void signal_cb(fs_io *io, uint32_t events)
{
    fs_rt *rt = io->data;
    struct signalfd_siginfo si;
    (void)events;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si)
        if ((int)si.ssi_signo == SIGHUP) fs_reload_request(rt, "SIGHUP", 0);
}

/* SIGTERM/SIGINT, from the signal thread. */
static void stop_signal_cb(fs_io *io, uint32_t events)
{
    uint64_t v;
    (void)events;
    if (read(io->fd, &v, sizeof v) < 0 && errno != EAGAIN) fs_warn("eventfd read: %s", strerror(errno));
    fs_rt_poll_signals(io->data);
}

static void commit_timer_cb(fs_timer *t)
{
    fs_rt *rt = t->data;
    fs_checkpoint_begin(rt);
    fs_timer_start(&rt->loop, t, rt->commit_interval_ms);
}

static fs_io stop_io;

static int setup_signals(fs_rt *rt)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Already blocked before librdkafka started its threads (see main.c). */
    sigprocmask(SIG_BLOCK, &set, NULL);
    if (fs_signals_start() || sigs.efd < 0) return -1;
    stop_io.fd = sigs.efd;
    stop_io.cb = stop_signal_cb;
    stop_io.data = rt;
    if (fs_io_add(&rt->loop, &stop_io, EPOLLIN)) return -1;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    rt->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (rt->sfd < 0) return -1;
    rt->sio.fd = rt->sfd;
    rt->sio.cb = signal_cb;
    rt->sio.data = rt;
    return fs_io_add(&rt->loop, &rt->sio, EPOLLIN);
}

static void finish(fs_rt *rt)
{
    rt->closing = 1;
    if (rt->revoke) {
        rt->revoke_deadline = 0;
        fs_kafka_revoke_poll(rt);
    }
    fs_sched_kill_all(rt); /* cancels HTTP requests still in flight */
    fs_http_close(rt);
    int synced = 0;
    if (rt->fatal) {
        fs_error("%s", rt->fatal_msg);
        rt->exit_code = 1;
    } else if (fs_checkpoint_sync(rt, 30000) == 0) {
        fs_info("final checkpoint done: offsets committed");
        synced = 1;
    } else {
        rt->exit_code = 1;
    }
    fs_kafka_close(rt);
    /* Only now: leaving the group revokes the partitions, and the revocation
     * writes each table partition's changelog once more. */
    if (synced && rt->ntables)
        fs_info("tables: %lld changelog records and %lld LMDB writes for %lld events; "
                "%lld records recovered",
                (long long)rt->changelog_records, (long long)rt->lmdb_writes,
                (long long)rt->events_in, (long long)rt->recovered_records);
    rt->stopped = 1;
}

int fs_rt_run(fs_rt *rt)
{
    if (rt->handle_signals && setup_signals(rt))
        fs_warn("signalfd failed: SIGTERM will not stop the worker gracefully");
    rt->commit_timer.cb = commit_timer_cb;
    rt->commit_timer.data = rt;
    fs_timer_start(&rt->loop, &rt->commit_timer, rt->commit_interval_ms);
    if (rt->handle_signals) fs_rt_poll_signals(rt); /* one that came while the worker started */
    while (!rt->stopped) {
        int busy = rt->ready_head || rt->tp->pending || rt->tail_pending;
        int64_t t = fs_loop_next_timeout(&rt->loop);
        int timeout = busy ? 0 : (t < 0 || t > 1000) ? 1000 : (int)t;
        /* waiting for agents to reach a boundary (a reload's pause is visible: look often) */
        if (rt->revoke && timeout > 20) timeout = 20;
        if (rt->draining && timeout > 2) timeout = 2;
        if (fs_loop_poll(&rt->loop, timeout) < 0) fs_rt_fatal(rt, "epoll_wait failed");
        fs_worker_poll(rt);
        fs_loop_run_timers(&rt->loop, fs_loop_now(&rt->loop));
        fs_sched_run_ready(rt);
        fs_checkpoint_poll(rt);
        fs_reload_poll(rt);
        if (rt->fatal) {
            finish(rt);
            break;
        }
        if (rt->stopping) {
            if (rt->nlive_agents == 0) {
                finish(rt);
            } else if (fs_loop_now(&rt->loop) > rt->stop_deadline) {
                fs_warn("%d agent coroutines still busy after %d s; committing what is finished",
                        rt->nlive_agents, FS_STOP_TIMEOUT_MS / 1000);
                finish(rt);
            }
        }
    }
    fs_timer_stop(&rt->loop, &rt->commit_timer);
    return rt->exit_code;
}

/* fstream.testing: run until nothing is left to do at the current fake time. */
int fs_rt_run_until_idle(fs_rt *rt, int64_t max_rounds)
{
    int64_t rounds = 0;
    for (;;) {
        int n = fs_worker_poll(rt);
        if (rt->http_inflight) { /* real transfers: not idle until they finish */
            fs_http_poll(rt);
            n++;
        }
        n += fs_loop_run_timers(&rt->loop, fs_loop_now(&rt->loop));
        n += fs_sched_run_ready(rt);
        if (rt->fatal) return -1;
        if (!n) return 0;
        if (++rounds > max_rounds) return 1;
    }
}
