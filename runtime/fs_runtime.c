/* fs_runtime: the worker's main loop and lifecycle.
 *
 * One iteration: wait for I/O or the next timer, pull what librdkafka has for
 * us, fire due timers, resume every ready coroutine once, advance the
 * checkpoint. Stopping (SIGTERM/SIGINT): stop fetching, let agents finish the
 * events they hold, then flush outputs, commit and leave the group. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <unistd.h>

#include "fs_log.h"
#include "fs_rt.h"

#define FS_STOP_TIMEOUT_MS 30000

int64_t fs_rt_wall_ms(fs_rt *rt)
{
    if (rt->test) return rt->wall_offset_ms + fs_loop_now(&rt->loop);
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
    rt->stop_deadline = fs_loop_now(&rt->loop) + FS_STOP_TIMEOUT_MS;
    fs_info("stopping (%s): finishing in-flight events", why);
    fs_wake_streams(rt);
}

static void signal_cb(fs_io *io, uint32_t events)
{
    fs_rt *rt = io->data;
    struct signalfd_siginfo si;
    (void)events;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        int sig = (int)si.ssi_signo;
        if (sig == SIGHUP) {
            fs_reload_request(rt, "SIGHUP", 0);
            continue;
        }
        if (rt->stopping) {
            fs_error("second %s: exiting at once without committing", strsignal(sig));
            _exit(128 + sig);
        }
        fs_rt_request_stop(rt, sig == SIGTERM ? "SIGTERM" : "SIGINT");
    }
}

static void commit_timer_cb(fs_timer *t)
{
    fs_rt *rt = t->data;
    fs_checkpoint_begin(rt);
    fs_timer_start(&rt->loop, t, rt->commit_interval_ms);
}

static int setup_signals(fs_rt *rt)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Already blocked before librdkafka started its threads (see main.c). */
    sigprocmask(SIG_BLOCK, &set, NULL);
    rt->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (rt->sfd < 0) return -1;
    rt->sio.fd = rt->sfd;
    rt->sio.cb = signal_cb;
    rt->sio.data = rt;
    return fs_io_add(&rt->loop, &rt->sio, EPOLLIN);
}

static void finish(fs_rt *rt)
{
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
    if (!rt->test && setup_signals(rt))
        fs_warn("signalfd failed: SIGTERM will not stop the worker gracefully");
    rt->commit_timer.cb = commit_timer_cb;
    rt->commit_timer.data = rt;
    fs_timer_start(&rt->loop, &rt->commit_timer, rt->commit_interval_ms);
    while (!rt->stopped) {
        int busy = rt->ready_head || rt->produce_pending || rt->tail_pending ||
                   (rt->consume_pending && !rt->stopping);
        int64_t t = fs_loop_next_timeout(&rt->loop);
        int timeout = busy ? 0 : (t < 0 || t > 1000) ? 1000 : (int)t;
        /* waiting for agents to reach a boundary (a reload's pause is visible: look often) */
        if (rt->revoke && timeout > 20) timeout = 20;
        if (rt->draining && timeout > 2) timeout = 2;
        if (fs_loop_poll(&rt->loop, timeout) < 0) fs_rt_fatal(rt, "epoll_wait failed");
        fs_kafka_poll(rt);
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
        int n = fs_memlog_deliver(rt);
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
