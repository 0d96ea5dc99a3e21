#include "fs_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int fs_log_level = FS_LOG_INFO;

/* Records held back while the worker starts (see fs_log_hold). librdkafka's
 * threads log too, hence the lock; `holding` is read without it first so that
 * logging costs nothing extra once the worker runs. */
#define HOLD_MAX (1 << 20)
static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int holding;
static char *held;
static size_t held_len;

/* With hold_lock held. */
static void write_held(void)
{
    if (held_len) fwrite(held, 1, held_len, stderr);
    free(held);
    held = NULL;
    held_len = 0;
}

void fs_log_hold(int on)
{
    pthread_mutex_lock(&hold_lock);
    if (!on) write_held();
    atomic_store(&holding, on != 0);
    pthread_mutex_unlock(&hold_lock);
}

/* Keeps a record while holding; 0 when it is to be written now. */
static int hold(const char *line, size_t len)
{
    if (!atomic_load(&holding)) return 0;
    int kept = 0;
    pthread_mutex_lock(&hold_lock);
    if (atomic_load(&holding)) {
        char *more = held_len + len <= HOLD_MAX ? realloc(held, held_len + len) : NULL;
        if (more) {
            memcpy(more + held_len, line, len);
            held = more;
            held_len += len;
            kept = 1;
        } else { /* too much, or no memory: write everything from now on */
            write_held();
            atomic_store(&holding, 0);
        }
    }
    pthread_mutex_unlock(&hold_lock);
    return kept;
}

/* "[w1] " or empty: told apart in the logs of several workers under one supervisor. */
static char tag[40];

void fs_log_set_tag(const char *t)
{
    if (!t || !*t) tag[0] = 0;
    else snprintf(tag, sizeof tag, "[%.31s] ", t);
}

static const char *names[] = {"debug", "info", "warn", "error"};

int fs_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) return i;
    if (strcmp(name, "warning") == 0) return FS_LOG_WARN;
    return -1;
}

void fs_log(int level, const char *fmt, ...)
{
    if (level < fs_log_level || level >= FS_LOG_OFF) return;
    char line[8192];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03d %s%-5s ", (int)(tv.tv_usec / 1000),
                  tag, names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (m < 0) return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    /* Warnings and errors are news the user may act on (the broker is down, a
     * second Ctrl-C): never held back. */
    if (level < FS_LOG_WARN && hold(line, len)) return;
    /* One write per record so lines from librdkafka's threads never interleave. */
    fwrite(line, 1, len, stderr);
}
