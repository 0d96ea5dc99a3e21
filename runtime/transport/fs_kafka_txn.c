/* fs_kafka_txn: the transaction thread of the kafka transport (see
 * fs_kafka_txn.h). One per transport, started by txn_init, stopped at close.
 *
 * How librdkafka 2.0.2 reports transactional errors (src/rdkafka_txnmgr.c),
 * which is what fs_txn_classify and the retries below rely on:
 * - Every transactional API returns an rd_kafka_error_t with three flags:
 *   fatal, txn_requires_abort, retriable. A result set by the background
 *   thread gets them from the request's error actions
 *   (rd_kafka_txn_curr_api_set_result: FATAL -> fatal, PERMANENT ->
 *   txn_requires_abort, RETRY -> retriable).
 * - Fencing: INVALID_PRODUCER_EPOCH and PRODUCER_FENCED (from
 *   InitProducerId, AddPartitions/AddOffsetsToTxn, TxnOffsetCommit, EndTxn
 *   and Produce) are FATAL, and the code is normalised to
 *   RD_KAFKA_RESP_ERR__FENCED (rd_kafka_txn_normalize_err). The producer
 *   then is in FATAL_ERROR state for good: every later call, abort
 *   included, fails with the fatal error. Only a new producer (same
 *   transactional.id, init_transactions) goes on. A transaction that timed
 *   out on the coordinator (transaction.timeout.ms) ends the same way: the
 *   coordinator bumped the epoch, the next request is fenced.
 * - INVALID_TXN_STATE, TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
 *   CLUSTER_AUTHORIZATION_FAILED, INVALID_PRODUCER_ID_MAPPING (TxnOffsetCommit)
 *   are fatal too, but not fencing (FS_TXN_FATAL here). INVALID_TXN_STATE is
 *   what EndTxn(abort) gets from a coordinator that lost the transaction
 *   while the broker was down longer than transaction.timeout.ms (seen on
 *   Kafka 3.8): fs_kafka.c therefore answers every failed abort and every
 *   fatal producer with a new producer, and only a new producer that cannot
 *   start makes the worker stop.
 * - TxnOffsetCommit's group errors ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID and
 *   FENCED_INSTANCE_ID (KIP-447: our consumer's generation is no longer the
 *   group's, i.e. we are a zombie) are NOT fatal in librdkafka: PERMANENT,
 *   so the transaction requires an abort and the code is kept. The producer
 *   stays usable; the group fenced us, so we report FS_TXN_FENCED (the
 *   worker aborts and rejoins) without recreating the producer.
 * - A failed Produce of a transactional producer makes the transaction
 *   abortable (rdkafka_request.c: "current transaction must be aborted").
 * - Retriable: coordinator moves/loads, CONCURRENT_TRANSACTIONS and
 *   timeouts are retried by librdkafka itself within the call's timeout;
 *   what comes back retriable is mostly a timeout. commit_transaction,
 *   abort_transaction and init_transactions are resumable (calling again
 *   continues the operation in progress); send_offsets_to_transaction
 *   starts over, which is fine (offsets are idempotent within a
 *   transaction). We retry FS_TXN_RETRIES times, then report ABORTABLE
 *   (commit) or the error as it stands.
 * - commit_transaction and abort_transaction call rd_kafka_flush, which in
 *   event mode only waits for the outstanding message count to reach zero:
 *   the loop must keep serving delivery report events meanwhile (it does;
 *   the producer's queue wakes it), or the call times out. */
#include "fs_kafka_txn.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs_transport.h"

#define FS_TXN_RETRIES 3

struct fs_txn_thread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int efd;
    int quit;
    fs_txn_job *todo, *running, *done;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int fs_txn_classify(const rd_kafka_error_t *e, int *fenced_producer)
{
    rd_kafka_resp_err_t code = rd_kafka_error_code(e);
    *fenced_producer = 0;
    if (rd_kafka_error_is_fatal(e)) {
        if (code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
            code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH) {
            *fenced_producer = 1;
            return FS_TXN_FENCED;
        }
        return FS_TXN_FATAL;
    }
    if (code == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION || code == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID ||
        code == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID)
        return FS_TXN_FENCED;
    /* txn_requires_abort, a retriable error retried too often, or anything
     * else: this transaction is lost, the next one may do. */
    return FS_TXN_ABORTABLE;
}

/* Fills the job's result from e (destroyed here). */
static void set_error(fs_txn_job *j, const char *what, rd_kafka_error_t *e)
{
    j->result = fs_txn_classify(e, &j->fenced_producer);
    snprintf(j->msg, sizeof j->msg, "%s: %s (%s%s)", what, rd_kafka_error_string(e),
             rd_kafka_err2name(rd_kafka_error_code(e)),
             rd_kafka_error_is_fatal(e) ? ", fatal"
             : rd_kafka_error_txn_requires_abort(e) ? ", transaction must be aborted"
             : rd_kafka_error_is_retriable(e)       ? ", retried too often"
                                                    : "");
    rd_kafka_error_destroy(e);
}

enum { STEP_OFFSETS, STEP_COMMIT, STEP_ABORT, STEP_INIT };

static rd_kafka_error_t *call(fs_txn_job *j, int step)
{
    switch (step) {
    case STEP_OFFSETS:
        return rd_kafka_send_offsets_to_transaction(j->rk, j->offsets, j->cgmd, j->timeout_ms);
    case STEP_COMMIT:
        return rd_kafka_commit_transaction(j->rk, j->timeout_ms);
    case STEP_ABORT:
        return rd_kafka_abort_transaction(j->rk, j->timeout_ms);
    default:
        return rd_kafka_init_transactions(j->rk, j->timeout_ms);
    }
}

/* Calls a step until it succeeds or fails with an error that is not
 * retriable (or FS_TXN_RETRIES retries passed). NULL on success. */
static rd_kafka_error_t *with_retries(fs_txn_job *j, int step)
{
    rd_kafka_error_t *e = call(j, step);
    while (e && rd_kafka_error_is_retriable(e) && !rd_kafka_error_is_fatal(e) &&
           !rd_kafka_error_txn_requires_abort(e) && j->retries < FS_TXN_RETRIES) {
        rd_kafka_error_destroy(e);
        j->retries++;
        e = call(j, step);
    }
    return e;
}

static void run(fs_txn_job *j)
{
    rd_kafka_error_t *e;
    int64_t t0 = mono_ms();
    j->result = FS_TXN_OK;
    j->fenced_producer = 0;
    j->retries = 0;
    j->msg[0] = 0;
    switch (j->kind) {
    case FS_TXN_JOB_COMMIT:
        if (j->offsets && j->offsets->cnt) {
            e = with_retries(j, STEP_OFFSETS);
            if (e) {
                set_error(j, "sending the input offsets to the transaction", e);
                break;
            }
        }
        e = with_retries(j, STEP_COMMIT);
        if (e) set_error(j, "committing the transaction", e);
        break;
    case FS_TXN_JOB_ABORT:
        e = with_retries(j, STEP_ABORT);
        if (e) set_error(j, "aborting the transaction", e);
        break;
    case FS_TXN_JOB_INIT:
        if (j->old) rd_kafka_destroy(j->old);
        j->old = NULL;
        e = with_retries(j, STEP_INIT);
        if (e) {
            set_error(j, "initialising the new producer's transactions", e);
            /* A producer that cannot even start cannot be helped by another abort. */
            j->result = FS_TXN_FATAL;
        }
        break;
    default:
        j->result = FS_TXN_FATAL;
        snprintf(j->msg, sizeof j->msg, "unknown transaction job %d", j->kind);
    }
    j->ms = mono_ms() - t0;
}

static void *thread_main(void *arg)
{
    fs_txn_thread *th = arg;
    pthread_mutex_lock(&th->mu);
    for (;;) {
        while (!th->todo && !th->quit) pthread_cond_wait(&th->cv, &th->mu);
        if (!th->todo) break;
        fs_txn_job *j = th->todo;
        th->todo = NULL;
        th->running = j;
        pthread_mutex_unlock(&th->mu);
        run(j);
        pthread_mutex_lock(&th->mu);
        th->running = NULL;
        th->done = j;
        uint64_t one = 1;
        if (write(th->efd, &one, sizeof one) < 0) {
            /* An eventfd write fails only when its counter is full: the loop
             * has a wake-up pending anyway. */
        }
    }
    pthread_mutex_unlock(&th->mu);
    return NULL;
}

fs_txn_thread *fs_txn_thread_new(int efd, char *err, size_t errlen)
{
    fs_txn_thread *th = calloc(1, sizeof *th);
    if (!th) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    th->efd = efd;
    pthread_mutex_init(&th->mu, NULL);
    pthread_cond_init(&th->cv, NULL);
    int rc = pthread_create(&th->th, NULL, thread_main, th);
    if (rc) {
        snprintf(err, errlen, "cannot start the transaction thread: %s", strerror(rc));
        pthread_cond_destroy(&th->cv);
        pthread_mutex_destroy(&th->mu);
        free(th);
        return NULL;
    }
    return th;
}

int fs_txn_thread_start(fs_txn_thread *th, fs_txn_job *job)
{
    pthread_mutex_lock(&th->mu);
    int busy = th->todo || th->running || th->done;
    if (!busy) {
        th->todo = job;
        pthread_cond_signal(&th->cv);
    }
    pthread_mutex_unlock(&th->mu);
    return busy ? -1 : 0;
}

fs_txn_job *fs_txn_thread_done(fs_txn_thread *th)
{
    pthread_mutex_lock(&th->mu);
    fs_txn_job *j = th->done;
    th->done = NULL;
    pthread_mutex_unlock(&th->mu);
    return j;
}

int fs_txn_thread_busy(fs_txn_thread *th)
{
    pthread_mutex_lock(&th->mu);
    int busy = th->todo || th->running || th->done;
    pthread_mutex_unlock(&th->mu);
    return busy;
}

void fs_txn_thread_free(fs_txn_thread *th)
{
    if (!th) return;
    pthread_mutex_lock(&th->mu);
    th->quit = 1;
    pthread_cond_signal(&th->cv);
    pthread_mutex_unlock(&th->mu);
    pthread_join(th->th, NULL);
    pthread_cond_destroy(&th->cv);
    pthread_mutex_destroy(&th->mu);
    free(th);
}
