/* fs_transport: what both transports share — partition lists and the release
 * of fetched messages (see fs_transport.h). */
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

#include "fs_transport.h"

fs_tp *fs_tplist_add(fs_tplist *l, const char *topic, int32_t partition, int64_t offset)
{
    if (l->len == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        fs_tp *v = cap > l->cap ? realloc(l->items, (size_t)cap * sizeof *v) : NULL;
        if (!v) return NULL;
        l->items = v;
        l->cap = cap;
    }
    char *name = strdup(topic);
    if (!name) return NULL;
    fs_tp *tp = &l->items[l->len++];
    tp->topic = name;
    tp->partition = partition;
    tp->offset = offset;
    tp->err = 0;
    return tp;
}

fs_tp *fs_tplist_find(const fs_tplist *l, const char *topic, int32_t partition)
{
    for (int i = 0; i < l->len; i++)
        if (l->items[i].partition == partition && strcmp(l->items[i].topic, topic) == 0)
            return &l->items[i];
    return NULL;
}

int fs_tplist_copy(fs_tplist *dst, const fs_tplist *src)
{
    for (int i = 0; i < src->len; i++) {
        fs_tp *tp = fs_tplist_add(dst, src->items[i].topic, src->items[i].partition,
                                  src->items[i].offset);
        if (!tp) return -1;
        tp->err = src->items[i].err;
    }
    return 0;
}

void fs_tplist_free(fs_tplist *l)
{
    for (int i = 0; i < l->len; i++) free(l->items[i].topic);
    free(l->items);
    l->items = NULL;
    l->len = l->cap = 0;
}

void fs_transport_msg_free(struct rd_kafka_message_s *m, struct rd_kafka_headers_s *hdrs, int owned)
{
    if (owned) {
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        free(m);
    } else {
        rd_kafka_message_destroy(m);
    }
}
