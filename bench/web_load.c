/* bench-web-load: GETs a URL at a steady rate on one keep-alive connection
 * (bench/web.sh), as bench/web_load.py did, but cheaply: the point of the
 * measurement is the worker's cost, and on a 2-core machine a client that
 * takes 16 % of a core (Python) takes it from the worker being measured.
 *
 *   bench-web-load URL RATE SECONDS
 *
 * URL is http://HOST:PORT/PATH (IPv4 numeric host). Prints requests sent,
 * failures (status other than 200, or a broken connection), the rate, and
 * the median, 99th percentile and largest response time in milliseconds,
 * then the client's own CPU time. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int connect_to(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads one response on fd into buf (grown as needed); returns its status,
 * or -1 when the connection broke. Needs Content-Length (the worker sends it). */
static int read_response(int fd, char **buf, size_t *cap)
{
    size_t len = 0, head = 0, want = 0;
    for (;;) {
        if (len == *cap) {
            size_t ncap = *cap * 2;
            char *nb = realloc(*buf, ncap);
            if (!nb) return -1;
            *buf = nb;
            *cap = ncap;
        }
        ssize_t n = read(fd, *buf + len, *cap - len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return -1;
        }
        len += (size_t)n;
        if (!head) {
            char *end = memmem(*buf, len, "\r\n\r\n", 4);
            if (!end) continue;
            head = (size_t)(end - *buf) + 4;
            size_t cl = 0;
            int found = 0;
            for (char *p = *buf; p < end; p++) {
                if (*p == '\n' && strncasecmp(p + 1, "content-length:", 15) == 0) {
                    cl = strtoul(p + 16, NULL, 10);
                    found = 1;
                    break;
                }
            }
            if (!found) return -1;
            want = head + cl;
        }
        if (len >= want) {
            if (len > want) return -1; /* pipelining is not used: nothing may follow */
            int status = 0;
            if (sscanf(*buf, "HTTP/%*d.%*d %d", &status) != 1) return -1;
            return status;
        }
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench-web-load http://HOST:PORT/PATH RATE SECONDS\n");
        return 2;
    }
    char host[64], path[1024] = "/";
    int port;
    if (sscanf(argv[1], "http://%63[0-9.]:%d%1023s", host, &port, path) < 2) {
        fprintf(stderr, "bench-web-load: URL must be http://IPV4:PORT/PATH\n");
        return 2;
    }
    double rate = atof(argv[2]), secs = atof(argv[3]);
    if (rate <= 0 || secs <= 0) {
        fprintf(stderr, "bench-web-load: RATE and SECONDS must be positive\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bench-web-load: bad address %s\n", host);
        return 2;
    }
    char req[1200];
    int reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, host, port);
    size_t max = (size_t)(rate * secs) + 16, n = 0;
    double *times = malloc(max * sizeof *times);
    size_t cap = 65536;
    char *buf = malloc(cap);
    if (!times || !buf) return 1;
    int fd = connect_to(&sa);
    long fails = 0;
    int64_t start = now_ns(), period = (int64_t)(1e9 / rate), limit = (int64_t)(secs * 1e9);
    while (n < max) {
        int64_t due = start + (int64_t)n * period;
        if (now_ns() - start >= limit) break;
        struct timespec ts = {(time_t)(due / 1000000000), (long)(due % 1000000000)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        int64_t t0 = now_ns();
        int status = -1;
        if (fd < 0) fd = connect_to(&sa);
        if (fd >= 0 && write(fd, req, (size_t)reqlen) == reqlen) status = read_response(fd, &buf, &cap);
        if (status != 200) {
            fails++;
            if (status < 0 && fd >= 0) {
                close(fd);
                fd = -1;
            }
        }
        times[n++] = (double)(now_ns() - t0) / 1e6;
    }
    qsort(times, n, sizeof *times, cmp);
#define PICK(q) (n ? times[(size_t)((q) * (double)n) < n ? (size_t)((q) * (double)n) : n - 1] : 0.0)
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    printf("requests %zu failures %ld rate %.0f/s median_ms %.2f p99_ms %.2f max_ms %.2f client_cpu_s %.3f\n",
           n, fails, (double)n / secs, PICK(0.5), PICK(0.99), n ? times[n - 1] : 0.0, cpu);
    if (fd >= 0) close(fd);
    free(times);
    free(buf);
    return 0;
}
