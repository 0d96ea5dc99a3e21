#!/usr/bin/env python3
"""GET a URL at a steady rate on one keep-alive connection (bench/web.sh).

web_load.py URL RATE SECONDS  ->  prints requests sent, failures, and the
median, 99th percentile and largest response time in milliseconds.
"""
import http.client
import sys
import time
from urllib.parse import urlparse


def main():
    url, rate, secs = urlparse(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    times, fails = [], 0
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if now - start >= secs:
            break
        if due > now:
            time.sleep(due - now)
        t0 = time.monotonic()
        try:
            conn.request("GET", url.path or "/")
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                fails += 1
        except (OSError, http.client.HTTPException):
            fails += 1
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        times.append((time.monotonic() - t0) * 1000)
        n += 1
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] if times else 0
    print("requests %d failures %d rate %.0f/s median_ms %.2f p99_ms %.2f max_ms %.2f"
          % (n, fails, n / secs, pick(0.5), pick(0.99), times[-1] if times else 0))


if __name__ == "__main__":
    main()
