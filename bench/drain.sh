#!/usr/bin/env bash
# bench/drain.sh FSTREAM_BIN INPUT_TOPIC HOST:PORT [LABEL]
#
# Drains an input topic that scripts/bench's stateless scenario loaded (kept
# on a broker started with `scripts/kafka start`) once more with the given
# fstream-lua binary: a fresh consumer group and a fresh output topic, so two
# builds can be compared on the same input, alternating, on one broker.
# BENCH_SCRIPT: another app to drain it with (bench/join.sh: bench/join_app.lua).
# Prints bench-watch's JSON (first to last output), the worker's CPU seconds
# (utime + stime) and its peak RSS (VmHWM).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
BIN=$1 IN=$2 ADDR=$3 LABEL=${4:-run}
N=${BENCH_N:-1000000}
WATCH=${BENCH_WATCH:-$ROOT/build-rel/bench/bench-watch}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OUT=drain-out-$LABEL-$$-$RANDOM
"$ROOT/scripts/kafka" create-topic "$OUT" 8 --port "${ADDR##*:}" >/dev/null 2>&1
"$WATCH" -b "$ADDR" -t "$OUT" -n "$N" --timeout 300 --ready-file "$WORK/ready" >"$WORK/watch.json" 2>"$WORK/watch.err" &
W=$!
while [[ ! -f $WORK/ready ]]; do kill -0 "$W" 2>/dev/null || { cat "$WORK/watch.err" >&2; exit 1; }; sleep 0.05; done
BENCH_APP=drain-$LABEL-$$-$RANDOM BENCH_IN=$IN BENCH_OUT=$OUT \
	"$BIN" worker "${BENCH_SCRIPT:-$ROOT/bench/stateless.lua}" --broker "kafka://$ADDR" -l warn >"$WORK/worker.log" 2>&1 &
P=$!
wait "$W"
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$P/status")
TICKS=$(awk '{print $14 + $15}' "/proc/$P/stat")
kill -TERM "$P"
wait "$P" || true
printf '%s %s cpu_s=%s peak_rss_kib=%s\n' "$LABEL" "$(tr -d '\n' <"$WORK/watch.json")" \
	"$(awk -v t="$TICKS" -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / h }')" "$HWM"
