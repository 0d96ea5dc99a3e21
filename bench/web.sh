#!/usr/bin/env bash
# The web server's cost to event processing, and /metrics' response time
# (BENCHMARKS.md, "Web").
#
#   bench/web.sh [-n COUNT] [--rounds R]
#
# 1. Throughput: a standalone embedded broker (fstream-lua broker) holds COUNT
#    (default 2,000,000) small keyed messages in 16 partitions. Workers of
#    bench/web_app.lua (one agent counting per key) read them all, each in a
#    new consumer group, alternately without and with 500 requests/s to
#    /metrics (bench-web-load from bench/web_load.c, one keep-alive
#    connection, paced; a C client so that it takes little of the CPU being
#    measured), R rounds
#    (default 3). Both kinds poll /metrics every 50 ms to see when they are
#    done; throughput = COUNT / (last event - first event).
# 2. /metrics with 8 agents x 32 partitions: a worker of the same app with
#    AGENTS=8 on a 32-partition topic of its embedded broker, fed 320,000
#    messages; once they are processed, 2,000 requests at 200/s to /metrics
#    and, for comparison, to /healthz: median, p99, largest.
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
BUILD=${BENCH_BUILD_DIR:-$ROOT/build}
BIN=$BUILD/fstream-lua
LOAD=$BUILD/bench/bench-web-load # bench/web_load.c: the client's own CPU stays small
N=2000000
ROUNDS=3
while (($#)); do
	case $1 in
	-n) N=$2; shift ;;
	--rounds) ROUNDS=$2; shift ;;
	*) echo "usage: bench/web.sh [-n COUNT] [--rounds R]" >&2; exit 2 ;;
	esac
	shift
done
TMP=$(mktemp -d /tmp/fstream-webbench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

"$BIN" broker --partitions 16 --topic webbench-in --address-file "$TMP/addr" >"$TMP/broker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $TMP/addr ]] && break; sleep 0.1; done
ADDR=$(grep -o '[0-9.]*:[0-9]*' "$TMP/addr")
python3 -c "
import sys
with open('$TMP/in.txt', 'w') as f:
    for i in range($N): f.write('k%d:x\n' % (i % 10000))
"
kcat -P -b "$ADDR" -t webbench-in -K: -X partitioner=murmur2_random -X linger.ms=20 -l "$TMP/in.txt"
echo "broker $ADDR: $N messages in webbench-in (16 partitions)"

# One worker reading everything; prints its throughput. $1: with load (1) or not (0).
run() {
	local load=$1 id=webbench-$RANDOM$RANDOM
	env APP_ID=$id IN=webbench-in FSTREAM_BROKER=kafka://$ADDR "$BIN" worker "$SCRIPT_DIR/web_app.lua" \
		--web-port 0 >"$TMP/$id.log" 2>&1 &
	local wp=$!
	local web=""
	for _ in $(seq 300); do
		web=$(grep -o 'web  *http://[0-9.:]*' "$TMP/$id.log" | awk '{print $2}' || true)
		[[ -n $web ]] && break
		sleep 0.1
	done
	local lp=""
	if ((load)); then
		"$LOAD" "$web/metrics" 500 600 >"$TMP/$id.load" &
		lp=$!
	fi
	python3 - "$web" "$N" <<'PY'
import sys, time, urllib.request
web, n = sys.argv[1], int(sys.argv[2])
first = last = None
while True:
    t = time.monotonic()
    body = urllib.request.urlopen(web + "/metrics", timeout=10).read().decode()
    done = 0
    for line in body.splitlines():
        if line.startswith("fstream_events_processed_total "):
            done = int(float(line.split()[1]))
    if done > 0 and first is None:
        first = t
    if done >= n:
        last = t
        break
    time.sleep(0.05)
print("%.0f" % (n / (last - first)))
PY
	[[ -n $lp ]] && kill "$lp" 2>/dev/null
	kill "$wp"
	wait "$wp" 2>/dev/null || true
}

declare -a A B
for r in $(seq "$ROUNDS"); do
	a=$(run 0)
	b=$(run 1)
	A+=("$a")
	B+=("$b")
	echo "round $r: without load $a events/s, with 500 /metrics requests/s $b events/s"
done
((ROUNDS > 0)) && python3 - "${A[*]}" "${B[*]}" <<'PY'
import sys, statistics
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print("median: without %.0f events/s, with %.0f events/s: %+.1f %%" % (ma, mb, (mb - ma) / ma * 100))
PY

# /metrics with 8 agents x 32 partitions: a worker on its embedded broker.
env APP_ID=webbench-wide IN=webbench-wide AGENTS=8 PARTITIONS=32 "$BIN" worker "$SCRIPT_DIR/web_app.lua" \
	--web-port 0 >"$TMP/wide.log" 2>&1 &
PIDS+=($!)
web=""
for _ in $(seq 300); do
	web=$(grep -o 'web  *http://[0-9.:]*' "$TMP/wide.log" | awk '{print $2}' || true)
	[[ -n $web ]] && break
	sleep 0.1
done
ADDR2=$(grep -o 'listening on [0-9.]*:[0-9]*' "$TMP/wide.log" | awk '{print $3}')
head -n 320000 "$TMP/in.txt" | kcat -P -b "$ADDR2" -t webbench-wide -K: -X partitioner=murmur2_random -X linger.ms=20
for _ in $(seq 600); do
	n=$(curl -s "$web/metrics" | awk '$1 == "fstream_events_processed_total" {print $2}' || true)
	[[ ${n:-0} -ge 320000 ]] && break
	sleep 0.1
done
bytes=$(curl -s "$web/metrics" | wc -c || true)
lines=$(curl -s "$web/metrics" | grep -vc '^#' || true)
echo "/metrics with 8 agents x 32 partitions: $lines samples, $bytes bytes ($n events processed)"
"$LOAD" "$web/metrics" 200 10
"$LOAD" "$web/healthz" 200 10
