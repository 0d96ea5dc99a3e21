#!/usr/bin/env bash
# bench/workers.sh HOST:PORT [-n COUNT] [--runs R] [--workers "1 2"]
#
# "Every core": drains one stateless backlog (COUNT ~100-byte JSON orders in 8
# partitions, bench-loadgen) on a running Kafka broker with bench-ceiling, then
# with `fstream-lua worker bench/stateless.lua --workers N` for each N, R times
# in turn (ceiling, N=1, N=2, ceiling, ...), each with a fresh consumer group
# and a fresh output topic under bench-watch (first output to COUNT). Prints
# one line per drain: label, seconds, msg/s, CPU seconds of the measured
# processes (the ceiling; the workers, not their supervisor, whose CPU is nil)
# and CPU per message, and the workers' summed peak RSS (VmHWM).
# Builds from $BENCH_BUILD_DIR (default build-rel, a release build).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
ADDR=${1:?usage: bench/workers.sh HOST:PORT [-n COUNT] [--runs R] [--workers \"1 2\"]}
shift
N=1000000 RUNS=1 WORKERS="1 2"
while (($#)); do
	case $1 in
	-n) N=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	--workers) WORKERS=$2; shift 2 ;;
	*) echo "bench/workers.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
BUILD=$(realpath -m -- "${BENCH_BUILD_DIR:-$ROOT/build-rel}")
[[ -x $BUILD/fstream-lua && -x $BUILD/bench/bench-ceiling ]] ||
	{ echo "bench/workers.sh: build $BUILD first (meson setup $BUILD --buildtype=release)" >&2; exit 1; }
BIN=$BUILD/fstream-lua
WORK=$(mktemp -d)
S=""
trap '[[ -z $S ]] || kill -TERM "$S" 2>/dev/null; rm -rf "$WORK"' EXIT
TCK=$(getconf CLK_TCK)
STAMP=$(date +%s)-$$
IN=bench-wk-in-$STAMP

"$BUILD/bench/bench-loadgen" -b "$ADDR" -t "$IN" -n "$N" -p 8 >"$WORK/load.json"
echo "load: $(cat "$WORK/load.json")"

ticks_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

watch_start() { # OUT
	rm -f "$WORK/ready"
	"$BUILD/bench/bench-loadgen" -b "$ADDR" -t "$1" -n 0 -p 8 >/dev/null
	"$BUILD/bench/bench-watch" -b "$ADDR" -t "$1" -n "$N" --timeout 300 --ready-file "$WORK/ready" >"$WORK/watch.json" &
	WATCH=$!
	while [[ ! -f $WORK/ready ]]; do sleep 0.05; done
}

report() { # LABEL TICKS RSS_KIB
	awk -v l="$1" -v t="$2" -v h="$TCK" -v n="$N" -v r="$3" -v w="$(tr -d '\n' <"$WORK/watch.json")" 'BEGIN {
		match(w, /"seconds":[0-9.]+/); s = substr(w, RSTART + 10, RLENGTH - 10)
		match(w, /"msgs_per_sec":[0-9.]+/); m = substr(w, RSTART + 15, RLENGTH - 15)
		printf "%-10s %8.2f s %10.0f msg/s  cpu %6.2f s  %5.2f us/msg  peak_rss %s KiB\n", l, s, m, t / h, t / h / n * 1e6, r }'
}

for run in $(seq 1 "$RUNS"); do
	OUT=bench-wk-ceil-$STAMP-$run
	watch_start "$OUT"
	"$BUILD/bench/bench-ceiling" -b "$ADDR" -i "$IN" -o "$OUT" -n "$N" -g "bench-wk-ceil-$STAMP-$run" >/dev/null 2>"$WORK/ceil.err" &
	P=$!
	T=0
	while kill -0 "$P" 2>/dev/null; do
		t=$(ticks_of "$P"); ((t > 0)) && T=$t
		sleep 0.1
	done
	wait "$P"
	wait "$WATCH"
	report "ceiling" "$T" "-"
	for w in $WORKERS; do
		OUT=bench-wk-out-$STAMP-$run-$w
		watch_start "$OUT"
		BENCH_APP=bench-wk-$STAMP-$run-$w BENCH_IN=$IN BENCH_OUT=$OUT \
			"$BIN" worker "$ROOT/bench/stateless.lua" --workers "$w" --broker "kafka://$ADDR" --no-web \
			--store "lmdb://$WORK/store-$run-$w" -l warn >"$WORK/worker.log" 2>&1 &
		S=$!
		wait "$WATCH" || { echo "bench-watch failed; the workers' log:" >&2; tail -40 "$WORK/worker.log" >&2; }
		T=0 RSS=0
		for c in $(pgrep -P "$S"); do
			T=$((T + $(ticks_of "$c")))
			RSS=$((RSS + $(awk '/VmHWM/ {print $2}' "/proc/$c/status")))
		done
		kill -TERM "$S"
		wait "$S" || echo "workers exited $?: $(tail -3 "$WORK/worker.log")" >&2
		S=""
		report "workers=$w" "$T" "$RSS"
	done
done
