/* fs_supervise: N workers under one supervisor process (see fs_supervise.h). */
#include "fs_supervise.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs_log.h"

struct child {
    int index; /* 1..n, what the worker's log lines carry ("w1") */
    char *const *argv;
    pid_t pid;          /* 0: not running */
    int64_t started;    /* when the current run began (ms) */
    int64_t restart_at; /* 0: no restart pending */
    int backoff;        /* the next restart's delay (ms) */
    int last_ok;        /* the last run exited 0 */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* How a run ended, for the log. */
static void describe(int status, char *buf, size_t len)
{
    if (WIFEXITED(status)) snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else snprintf(buf, len, "ended with wait status %d", status);
}

/* A crashed or unstartable worker: its restart, after the backoff. */
static void schedule(struct child *c, int64_t now, const char *what)
{
    /* A run that lasted a minute was healthy: the crash is news, not a loop. */
    if (c->started && now - c->started >= FS_SUPERVISE_HEALTHY_MS) c->backoff = FS_SUPERVISE_BACKOFF_MIN_MS;
    c->restart_at = now + c->backoff;
    fs_warn("worker %d %s after %.1f s; restarting it in %.1f s", c->index, what,
            c->started ? (double)(now - c->started) / 1000 : 0.0, (double)c->backoff / 1000);
    c->backoff = c->backoff * 2 > FS_SUPERVISE_BACKOFF_MAX_MS ? FS_SUPERVISE_BACKOFF_MAX_MS : c->backoff * 2;
}

static void start(struct child *c, int n, const sigset_t *child_mask, pid_t self)
{
    int64_t now = now_ms();
    c->restart_at = 0;
    c->started = now;
    pid_t pid = fork();
    if (pid < 0) {
        char what[200];
        snprintf(what, sizeof what, "could not be started (fork: %s)", strerror(errno));
        c->started = 0;
        schedule(c, now, what);
        return;
    }
    if (pid == 0) {
        /* Its own process group: a terminal's Ctrl-C (sent to the foreground
         * group) reaches the supervisor only, which forwards it once; a second
         * copy straight from the terminal would make the worker exit at once. */
        setpgid(0, 0);
        /* Gone with the supervisor, even a kill -9'd one. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != self) _exit(1);
        char v[16];
        snprintf(v, sizeof v, "%d", c->index);
        setenv("FSTREAM_WORKER_INDEX", v, 1);
        snprintf(v, sizeof v, "%d", n);
        setenv("FSTREAM_WORKERS", v, 1);
        sigprocmask(SIG_SETMASK, child_mask, NULL);
        execv("/proc/self/exe", c->argv);
        fprintf(stderr, "fstream-lua: worker %d: cannot run /proc/self/exe: %s\n", c->index, strerror(errno));
        _exit(127);
    }
    c->pid = pid;
    fs_info("worker %d started (pid %d)", c->index, (int)pid);
}

/* Collects the workers that ended; schedules restarts unless stopping. */
static void reap(struct child *kids, int n, int stopping)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct child *c = NULL;
        for (int i = 0; i < n && !c; i++)
            if (kids[i].pid == pid) c = &kids[i];
        if (!c) continue;
        c->pid = 0;
        c->last_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        char what[160];
        describe(status, what, sizeof what);
        if (c->last_ok) fs_info("worker %d (pid %d) stopped (exit 0)", c->index, (int)pid);
        else if (stopping) fs_warn("worker %d (pid %d) %s", c->index, (int)pid, what);
        else {
            char line[200];
            snprintf(line, sizeof line, "(pid %d) %s", (int)pid, what);
            schedule(c, now_ms(), line);
        }
    }
}

int fs_supervise(int n, char *const *const *argvs)
{
    struct child *kids = calloc((size_t)n, sizeof *kids);
    if (!kids) {
        fs_error("supervisor: out of memory");
        return 1;
    }
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        fs_error("supervisor: signalfd: %s", strerror(errno));
        free(kids);
        return 1;
    }
    /* The workers start with the mask main.c set (SIGTERM, SIGINT, SIGHUP
     * blocked: each takes them on its own thread), without SIGCHLD's. */
    sigset_t child_mask = old;
    sigdelset(&child_mask, SIGCHLD);
    pid_t self = getpid();
    for (int i = 0; i < n; i++) {
        kids[i].index = i + 1;
        kids[i].argv = argvs[i];
        kids[i].backoff = FS_SUPERVISE_BACKOFF_MIN_MS;
        start(&kids[i], n, &child_mask, self);
    }
    int stopping = 0;
    for (;;) {
        int running = 0;
        int64_t next = 0;
        for (int i = 0; i < n; i++) {
            running += kids[i].pid > 0;
            if (kids[i].restart_at && (!next || kids[i].restart_at < next)) next = kids[i].restart_at;
        }
        if (!running && !next) break;
        int timeout = -1;
        if (next) {
            int64_t d = next - now_ms();
            timeout = d < 0 ? 0 : d > 60000 ? 60000 : (int)d;
        }
        struct pollfd pfd = {.fd = sfd, .events = POLLIN};
        if (poll(&pfd, 1, timeout) < 0 && errno != EINTR) {
            fs_error("supervisor: poll: %s", strerror(errno));
            break;
        }
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            int sig = (int)si.ssi_signo;
            if (sig == SIGCHLD) continue; /* reaped below, whichever child it was */
            if (sig == SIGTERM || sig == SIGINT) {
                if (!stopping) fs_info("%s: stopping %d workers", strsignal(sig), running);
                else fs_warn("second %s: passed on (the workers exit at once)", strsignal(sig));
                stopping = 1;
                /* A worker waiting for its restart stays down. */
                for (int i = 0; i < n; i++) kids[i].restart_at = 0;
            } else {
                fs_info("%s: passed on to %d workers", strsignal(sig), running);
            }
            for (int i = 0; i < n; i++)
                if (kids[i].pid > 0) kill(kids[i].pid, sig);
        }
        reap(kids, n, stopping);
        if (stopping) continue;
        int64_t now = now_ms();
        for (int i = 0; i < n; i++)
            if (kids[i].restart_at && kids[i].restart_at <= now) start(&kids[i], n, &child_mask, self);
    }
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (!kids[i].last_ok) rc = 1;
    fs_info("every worker stopped (exit %d)", rc);
    close(sfd);
    free(kids);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}
