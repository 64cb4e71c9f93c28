/* The C consumer anchor of the drain case: rstream's wire work, done by hiredis in C.
 *
 *   c_consumer HOST PORT STREAM GROUP CONSUMER COUNT TIMEOUT_S [SPIN_NS]
 *
 * Built at bench time by bench/c_consumer.py (cc -O2 ... -lhiredis); never committed.
 *
 * Redis commands, on one connection, exactly what rstream's reader sends while entries flow:
 * - XREADGROUP GROUP G C COUNT 500 STREAMS S >   (no BLOCK: the stream is pre-filled)
 * - XACK S G id...                                (all ids of one handled batch)
 * Two reads are kept in flight (rstream.reader.PIPELINE_DEPTH). The first write sends two
 * reads; then, for each reply collected (oldest first), its entries go to a no-op handler and
 * one write carries that batch's XACK followed by the next read. A short reply (fewer than
 * 500 entries) means the stream is drained: its XACK goes alone and no further read is sent.
 *
 * SPIN_NS (default 0): the handler busy-waits that many ns per entry instead of returning at
 * once, a control that slows the client with CPU work alone, the wire work unchanged: how the
 * server's CPU per entry moves with the client's pace on the same cores.
 *
 * Protocol with the parent (bench/c_consumer.py), which measures the server's CPU around the
 * run: after connecting, print BENCH-READY and wait for a line on stdin; then drain, timed
 * from just before the first write until the XACK replies have counted COUNT entries (the
 * server has acked all), and print one line "BENCH-RESULT {json}" with the wall time and
 * this process's own CPU (getrusage) in that window. Exit 1 with a line on stderr on error.
 */
#include <hiredis/hiredis.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define BATCH 500
#define DEPTH 2

/* One write's replies still to collect: an XACK's (ack), then a read's (read). */
typedef struct {
    int ack;
    int read;
} Slot;

static Slot slots[DEPTH + 1];
static int slot_head, slot_count;
static long long acked, reads, acks, writes, handled_bytes;

static void fail(const char *what, redisContext *c, redisReply *reply) {
    const char *why = reply && reply->type == REDIS_REPLY_ERROR ? reply->str : (c && c->err ? c->errstr : "");
    fprintf(stderr, "c_consumer: %s: %s\n", what, why);
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void push(int ack, int read) {
    slots[(slot_head + slot_count) % (DEPTH + 1)] = (Slot){ack, read};
    slot_count++;
}

static Slot pop(void) {
    Slot slot = slots[slot_head];
    slot_head = (slot_head + 1) % (DEPTH + 1);
    slot_count--;
    return slot;
}

/* Everything appended so far, in one write (a loop only if the kernel takes part of it). */
static void flush(redisContext *c) {
    int done = 0;
    writes++;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK)
            fail("write", c, NULL);
}

static const char *read_argv[9];
static size_t read_len[9];

static void append_read(redisContext *c) {
    if (redisAppendCommandArgv(c, 9, read_argv, read_len) != REDIS_OK)
        fail("append XREADGROUP", c, NULL);
    reads++;
}

static redisReply *get(redisContext *c, const char *what) {
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK || reply == NULL)
        fail(what, c, NULL);
    if (((redisReply *)reply)->type == REDIS_REPLY_ERROR)
        fail(what, c, reply);
    return reply;
}

/* The entries of an XREADGROUP reply (RESP2: [[stream, [[id, [f, v, ...]], ...]]] or nil). */
static redisReply *entries_of(redisReply *reply) {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0)
        return NULL;
    redisReply *stream = reply->element[0];
    if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2 || stream->element[1]->type != REDIS_REPLY_ARRAY)
        fail("unexpected XREADGROUP reply shape", NULL, NULL);
    return stream->element[1];
}

static double spin_s;

/* The no-op handler: looks at each entry's id and fields, as a handler would receive them
 * (and spins for SPIN_NS when asked). */
static void handle(redisReply *entry) {
    handled_bytes += (long long)entry->element[0]->len + (long long)entry->element[1]->elements;
    if (spin_s > 0) {
        double until = now_s() + spin_s;
        while (now_s() < until)
            ;
    }
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: c_consumer HOST PORT STREAM GROUP CONSUMER COUNT TIMEOUT_S [SPIN_NS]\n");
        return 2;
    }
    spin_s = argc == 9 ? atof(argv[8]) / 1e9 : 0;
    const char *stream = argv[3], *group = argv[4], *consumer = argv[5];
    long long count = atoll(argv[6]);
    double timeout_s = atof(argv[7]);
    char batch_text[16];
    snprintf(batch_text, sizeof batch_text, "%d", BATCH);
    const char *head[9] = {"XREADGROUP", "GROUP", group, consumer, "COUNT", batch_text, "STREAMS", stream, ">"};
    for (int i = 0; i < 9; i++) {
        read_argv[i] = head[i];
        read_len[i] = strlen(head[i]);
    }
    static const char *ack_argv[3 + BATCH];
    static size_t ack_len[3 + BATCH];
    ack_argv[0] = "XACK", ack_argv[1] = stream, ack_argv[2] = group;
    for (int i = 0; i < 3; i++)
        ack_len[i] = strlen(ack_argv[i]);

    redisContext *c = redisConnect(argv[1], atoi(argv[2]));
    if (c == NULL || c->err)
        fail("connect", c, NULL);
    redisReply *pong = redisCommand(c, "PING");  /* connected and answering, outside the window */
    if (pong == NULL || pong->type == REDIS_REPLY_ERROR)
        fail("PING", c, pong);
    freeReplyObject(pong);
    printf("BENCH-READY\n");
    fflush(stdout);
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL)
        fail("no go line on stdin", NULL, NULL);

    double cpu0 = cpu_s(), t0 = now_s(), deadline = t0 + timeout_s;
    append_read(c);
    append_read(c);
    flush(c);
    push(0, 1);
    push(0, 1);
    double t1 = 0, cpu1 = 0;
    while (slot_count > 0) {
        if (now_s() > deadline) {
            fprintf(stderr, "c_consumer: acked %lld of %lld in %.0f s\n", acked, count, timeout_s);
            return 1;
        }
        Slot slot = pop();
        if (slot.ack) {
            redisReply *reply = get(c, "XACK");
            acked += reply->integer;
            freeReplyObject(reply);
            if (acked >= count && t1 == 0) {  /* the server has acked every entry: the window ends */
                t1 = now_s();
                cpu1 = cpu_s();
            }
        }
        if (!slot.read)
            continue;
        redisReply *reply = get(c, "XREADGROUP");
        redisReply *entries = entries_of(reply);
        size_t n = entries ? entries->elements : 0;
        for (size_t i = 0; i < n; i++) {
            handle(entries->element[i]);
            ack_argv[3 + i] = entries->element[i]->element[0]->str;
            ack_len[3 + i] = entries->element[i]->element[0]->len;
        }
        if (n > 0) {
            if (redisAppendCommandArgv(c, 3 + (int)n, ack_argv, ack_len) != REDIS_OK)
                fail("append XACK", c, NULL);
            acks++;
        }
        int more = n == BATCH;  /* a full batch: more entries are waiting */
        if (more)
            append_read(c);
        if (n > 0 || more) {
            flush(c);
            push(n > 0, more);
        }
        freeReplyObject(reply);
    }
    if (t1 == 0) {
        fprintf(stderr, "c_consumer: the stream ran dry: acked %lld of %lld\n", acked, count);
        return 1;
    }
    double seconds = t1 - t0;
    printf("BENCH-RESULT {\"variant\": \"c-consumer\", \"entries\": %lld, \"acked\": %lld, \"seconds\": %.9f, "
           "\"rate\": %.3f, \"client_cpu_us_per_entry\": %.6f, \"reads\": %lld, \"xacks\": %lld, "
           "\"writes\": %lld, \"hiredis\": \"%d.%d.%d\", \"spin_ns\": %.0f, \"handled\": %lld}\n",
           count, acked, seconds, count / seconds, (cpu1 - cpu0) / count * 1e6, reads, acks, writes,
           HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH, spin_s * 1e9, handled_bytes);
    redisFree(c);
    return 0;
}
