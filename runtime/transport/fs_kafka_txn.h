/* fs_kafka_txn: the kafka transport's transaction thread (transport layer,
 * private to fs_kafka.c). librdkafka's transactional calls block for a
 * round trip or more (send_offsets_to_transaction, commit_transaction,
 * abort_transaction, init_transactions); the loop never blocks, so they run
 * here, one job at a time. The thread touches nothing but the handles a job
 * names and the job's own fields; its end is announced by writing to an
 * eventfd the loop watches, and fs_kafka.c reads the result on the loop's
 * thread. */
#ifndef FS_KAFKA_TXN_H
#define FS_KAFKA_TXN_H

#include <librdkafka/rdkafka.h>

enum fs_txn_job_kind {
    FS_TXN_JOB_COMMIT = 1, /* send_offsets_to_transaction (if any), commit_transaction */
    FS_TXN_JOB_ABORT,      /* abort_transaction */
    FS_TXN_JOB_INIT,       /* destroy `old` (a fenced producer), init_transactions of rk */
};

typedef struct fs_txn_job {
    int kind;
    rd_kafka_t *rk;  /* the producer */
    rd_kafka_t *old; /* INIT: destroyed by the thread first (it may take a moment) */
    rd_kafka_topic_partition_list_t *offsets;  /* COMMIT: owned by the job, may be NULL */
    rd_kafka_consumer_group_metadata_t *cgmd;  /* COMMIT: owned by the job */
    int timeout_ms; /* per librdkafka call */
    /* Results, read by the loop once the job is done. */
    int result;          /* enum fs_txn_result */
    int fenced_producer; /* the producer is fenced for good (fatal): it must be recreated */
    int retries;         /* retriable errors retried */
    int64_t ms;          /* how long the job took */
    char msg[512];
} fs_txn_job;

typedef struct fs_txn_thread fs_txn_thread;

/* Starts the thread; it writes 1 to efd whenever a job ends. NULL on failure. */
fs_txn_thread *fs_txn_thread_new(int efd, char *err, size_t errlen);
/* Hands the thread a job (the caller keeps it alive until it is returned by
 * fs_txn_thread_done). -1 if a job is still running. */
int fs_txn_thread_start(fs_txn_thread *th, fs_txn_job *job);
/* The job that ended, or NULL (none ended since the last call). */
fs_txn_job *fs_txn_thread_done(fs_txn_thread *th);
/* A job is running or ended without being collected. */
int fs_txn_thread_busy(fs_txn_thread *th);
/* Waits for the running job (bounded by its own timeouts), stops the thread. */
void fs_txn_thread_free(fs_txn_thread *th);

/* What a transactional error means for the worker (enum fs_txn_result);
 * *fenced_producer = 1 when the producer itself is unusable through fencing. */
int fs_txn_classify(const rd_kafka_error_t *e, int *fenced_producer);

#endif
