#!/usr/bin/env bash
# bench/latency.sh (--embedded | --kafka HOST:PORT) [-r RATE] [-d SECONDS] [--timeline] [--floor]
#
# End-to-end latency of bench/stateless.lua at a steady input rate: starts one
# worker (`fstream-lua worker`, -l info) on fresh topics (8 partitions) and,
# once it has its partitions, bench-latency, which produces RATE orders a
# second (default 20,000) for SECONDS (default 20), reads the worker's output
# and prints percentiles of producer send -> output (see bench/latency.c).
#   --embedded     on a `fstream-lua broker` this script starts (and stops)
#   --kafka ADDR   on a running Kafka; the output topic is created with
#                  message.timestamp.type=LogAppendTime (scripts/kafka), so
#                  ts_ms is producer send -> the broker's append of the output
#   --floor        no worker: bench-latency reads its own input topic, which
#                  measures the broker and the machine alone (send -> read)
# Prints bench-latency's JSON and the worker's CPU seconds. $BENCH_LOGLEVEL:
# the worker's -l (default info); $BENCH_KEEP_LOG=FILE keeps its log. Extra worker
# settings come through the environment (FSTREAM_KAFKA_PRODUCER=linger.ms=1).
# Builds from $BENCH_BUILD_DIR (default build-rel, a release build).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
MODE="" ADDR="" RATE=20000 SECS=20 TIMELINE=() FLOOR=0
while (($#)); do
	case $1 in
	--embedded) MODE=embedded; shift ;;
	--kafka) MODE=kafka; ADDR=$2; shift 2 ;;
	-r) RATE=$2; shift 2 ;;
	-d) SECS=$2; shift 2 ;;
	--timeline) TIMELINE=(--timeline); shift ;;
	--floor) FLOOR=1; shift ;;
	*) echo "bench/latency.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
[[ -n $MODE ]] || { echo "usage: bench/latency.sh (--embedded | --kafka HOST:PORT) [-r RATE] [-d SECONDS] [--timeline] [--floor]" >&2; exit 2; }
BUILD=$(realpath -m -- "${BENCH_BUILD_DIR:-$ROOT/build-rel}")
[[ -x $BUILD/fstream-lua && -x $BUILD/bench/bench-latency ]] ||
	{ echo "bench/latency.sh: build $BUILD first (meson setup $BUILD --buildtype=release)" >&2; exit 1; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
STAMP=$(date +%s)-$$
IN=bench-lat-in-$STAMP OUT=bench-lat-out-$STAMP

if [[ $MODE == embedded ]]; then
	"$BUILD/fstream-lua" broker --partitions 8 --topic "$IN" --topic "$OUT" --address-file "$WORK/addr" >"$WORK/broker.log" 2>&1 &
	PIDS+=($!)
	while ! grep -qs ':' "$WORK/addr"; do sleep 0.05; done
	ADDR=$(grep -o '[0-9.]*:[0-9]*' "$WORK/addr")
else
	"$ROOT/scripts/kafka" create-topic "$IN" 8 --config message.timestamp.type=LogAppendTime --port "${ADDR##*:}" >/dev/null 2>&1
	"$ROOT/scripts/kafka" create-topic "$OUT" 8 --config message.timestamp.type=LogAppendTime --port "${ADDR##*:}" >/dev/null 2>&1
fi
if ((FLOOR)); then
	"$BUILD/bench/bench-latency" -b "$ADDR" --in "$IN" --out "$IN" -r "$RATE" -d "$SECS" "${TIMELINE[@]}"
	exit
fi

BENCH_APP=bench-lat-$STAMP BENCH_IN=$IN BENCH_OUT=$OUT \
	"$BUILD/fstream-lua" worker "$ROOT/bench/stateless.lua" --broker "kafka://$ADDR" --no-web -l "${BENCH_LOGLEVEL:-info}" \
	--store "lmdb://$WORK/store" >"$WORK/worker.log" 2>&1 &
W=$!
PIDS+=("$W")
for _ in $(seq 1 600); do
	grep -q "assigned 8 partitions" "$WORK/worker.log" && break
	kill -0 "$W" 2>/dev/null || { cat "$WORK/worker.log" >&2; exit 1; }
	sleep 0.1
done
grep -q "assigned 8 partitions" "$WORK/worker.log" || { cat "$WORK/worker.log" >&2; exit 1; }
T0=$(awk '{print $14 + $15}' "/proc/$W/stat")
rc=0
"$BUILD/bench/bench-latency" -b "$ADDR" --in "$IN" --out "$OUT" -r "$RATE" -d "$SECS" "${TIMELINE[@]}" || rc=$?
T1=$(awk '{print $14 + $15}' "/proc/$W/stat")
echo "worker cpu_s=$(awk -v t=$((T1 - T0)) -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / h }') during the run ($MODE, $ADDR)"
kill -TERM "$W" 2>/dev/null || true
wait "$W" || true
[[ -z ${BENCH_KEEP_LOG:-} ]] || cp "$WORK/worker.log" "$BENCH_KEEP_LOG"
exit "$rc"
