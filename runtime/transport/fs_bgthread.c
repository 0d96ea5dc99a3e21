/* fs_bgthread: a thread that runs one blocking request at a time for the loop
 * (see fs_bgthread.h). */
#include "fs_bgthread.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fs_bgthread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the thread waits here for asked, its interval or stop */
    pthread_cond_t done; /* fs_bgthread_wait waits here for a publish */
    int asked, busy, stop;
    int interval_ms;
    void (*work)(void *data);
    void (*publish)(void *data);
    void *data;
};

void fs_bgthread_deadline(struct timespec *until, int ms)
{
    clock_gettime(CLOCK_REALTIME, until);
    until->tv_sec += ms / 1000;
    until->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until->tv_nsec >= 1000000000L) until->tv_sec++, until->tv_nsec -= 1000000000L;
}

static void *run(void *arg)
{
    fs_bgthread *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        if (t->interval_ms > 0) {
            struct timespec until;
            fs_bgthread_deadline(&until, t->interval_ms);
            while (!t->asked && !t->stop)
                if (pthread_cond_timedwait(&t->wake, &t->mu, &until) == ETIMEDOUT) break;
        } else {
            while (!t->asked && !t->stop) pthread_cond_wait(&t->wake, &t->mu);
        }
        if (t->stop) break;
        t->asked = 0;
        t->busy = 1;
        pthread_mutex_unlock(&t->mu);
        t->work(t->data);
        pthread_mutex_lock(&t->mu);
        t->busy = 0;
        t->publish(t->data);
        pthread_cond_broadcast(&t->done);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

fs_bgthread *fs_bgthread_start(const char *what, int interval_ms, void (*work)(void *data),
                               void (*publish)(void *data), void *data, char *err, size_t errlen)
{
    fs_bgthread *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->interval_ms = interval_ms;
    t->work = work;
    t->publish = publish;
    t->data = data;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->wake, NULL);
    pthread_cond_init(&t->done, NULL);
    int e = pthread_create(&t->th, NULL, run, t);
    if (e) {
        snprintf(err, errlen, "cannot start the %s thread: %s", what, strerror(e));
        pthread_cond_destroy(&t->done);
        pthread_cond_destroy(&t->wake);
        pthread_mutex_destroy(&t->mu);
        free(t);
        return NULL;
    }
    return t;
}

void fs_bgthread_ask(fs_bgthread *t)
{
    pthread_mutex_lock(&t->mu);
    if (!t->busy && !t->asked) {
        t->asked = 1;
        pthread_cond_signal(&t->wake);
    }
    pthread_mutex_unlock(&t->mu);
}

void fs_bgthread_lock(fs_bgthread *t) { pthread_mutex_lock(&t->mu); }

void fs_bgthread_unlock(fs_bgthread *t) { pthread_mutex_unlock(&t->mu); }

int fs_bgthread_wait(fs_bgthread *t, const struct timespec *until)
{
    if (t->stop) return -1;
    return pthread_cond_timedwait(&t->done, &t->mu, until) == 0 && !t->stop ? 0 : -1;
}

void fs_bgthread_stop(fs_bgthread *t)
{
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->wake);
    pthread_cond_broadcast(&t->done);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->th, NULL);
    pthread_cond_destroy(&t->done);
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
