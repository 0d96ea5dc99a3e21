/* fs_trace: see fs_trace.h. */
#include "fs_trace.h"

#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int lhex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int hex_field(const char *v, int n, int *nonzero)
{
    *nonzero = 0;
    for (int i = 0; i < n; i++) {
        if (!lhex(v[i])) return 0;
        if (v[i] != '0') *nonzero = 1;
    }
    return 1;
}

int fs_trace_valid(const char *v, size_t len)
{
    if (!v || len < FS_TRACEPARENT_LEN) return 0;
    int nz;
    if (!hex_field(v, 2, &nz) || (v[0] == 'f' && v[1] == 'f')) return 0;
    int v00 = v[0] == '0' && v[1] == '0';
    /* Version 00 is exactly 55 bytes; later versions may append fields. */
    if (v00 ? len != FS_TRACEPARENT_LEN : (len > FS_TRACEPARENT_LEN && v[FS_TRACEPARENT_LEN] != '-'))
        return 0;
    if (v[2] != '-' || v[35] != '-' || v[52] != '-') return 0;
    if (!hex_field(v + 3, 32, &nz) || !nz) return 0;
    if (!hex_field(v + 36, 16, &nz) || !nz) return 0;
    return hex_field(v + 53, 2, &nz);
}

/* Span ids need to be unique, not secret: splitmix64 seeded once from the
 * kernel (the loop's thread is the only caller). */
static uint64_t rng_state;
static int rng_seeded;

static uint64_t next64(void)
{
    if (!rng_seeded) {
        if (getrandom(&rng_state, sizeof rng_state, 0) != (ssize_t)sizeof rng_state) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            rng_state = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
        }
        rng_seeded = 1;
    }
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fs_trace_child(const char *parent, char out[FS_TRACEPARENT_LEN])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t id;
    do id = next64();
    while (id == 0);
    memcpy(out, "00-", 3);
    memcpy(out + 3, parent + 3, 32);
    out[35] = '-';
    for (int i = 0; i < 16; i++) out[36 + i] = hex[(id >> (60 - 4 * i)) & 15];
    out[52] = '-';
    out[53] = parent[53];
    out[54] = parent[54];
}
