#!/usr/bin/env bash
# bench/drain.sh PROGRAM INPUT_TOPIC HOST:PORT [LABEL]
#
# Drains an input topic that is already loaded (scripts/bench's stateless or
# wordcount scenario, or bench-loadgen, on a broker started with
# `scripts/kafka start`) once more: a fresh consumer group and a fresh output
# topic, so several programs can be compared on the same input, alternating,
# on one broker. PROGRAM is an fstream-lua binary, or a bench-ceiling binary
# (recognised by its name). Prints one line: LABEL, bench-watch's JSON (first
# to last output), the program's CPU seconds (utime + stime, all threads) and
# its peak RSS (VmHWM, KiB).
#
# Environment:
#   BENCH_N                messages in the input (default 1000000)
#   BENCH_DRAIN_APP        stateless (default: bench/stateless.lua) or wordcount
#                          (bench/wordcount.lua, with an LMDB store in a scratch dir)
#   BENCH_SCRIPT           another app to drain it with, instead (bench/join.sh:
#                          bench/join_app.lua)
#   BENCH_COMMIT_INTERVAL  the apps' commit_interval in seconds (default: stateless the
#                          runtime's, wordcount 2.8)
#   BENCH_WATCH            bench-watch binary (default build-rel/bench/bench-watch)
#   BENCH_LOG              keep the worker's log in this file (with -l $BENCH_LOG_LEVEL,
#                          default warn)
#   BENCH_BROKER_PID       the broker's pid: its CPU is not counted in others_pct, and is
#                          printed as broker_cpu_s (over the whole drain, the watcher's
#                          queries included)
#   BENCH_PERF             record the program with `perf record -g` into this file
#                          (BENCH_PERF_ARGS: more perf options, default -F 1999)
#
# others_pct: the machine's CPU used meanwhile by everything else (other
# processes, and the broker unless BENCH_BROKER_PID), in % of the whole
# machine (50 = one of two cores): on a shared machine it moves every time.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
BIN=$(realpath -- "$1") IN=$2 ADDR=$3 LABEL=${4:-run}
N=${BENCH_N:-1000000}
WATCH=${BENCH_WATCH:-$ROOT/build-rel/bench/bench-watch}
APPNAME=${BENCH_DRAIN_APP:-stateless}
[[ $APPNAME == stateless || $APPNAME == wordcount ]] || { echo "BENCH_DRAIN_APP: stateless or wordcount" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OUT=drain-out-$LABEL-$$-$RANDOM
GROUP=drain-$LABEL-$$-$RANDOM
"$ROOT/scripts/kafka" create-topic "$OUT" 8 --port "${ADDR##*:}" >/dev/null 2>&1
CLOCK=${BENCH_CLOCK:-output}
WATCHED=(-t "$OUT")
if [[ $CLOCK == committed ]]; then
	WATCHED=(-t "$IN" -g "$GROUP")
	export BENCH_COMMIT_INTERVAL=${BENCH_COMMIT_INTERVAL:-0.2}
elif [[ $CLOCK != output ]]; then
	echo "BENCH_CLOCK: output or committed" >&2; exit 2
fi
"$WATCH" -b "$ADDR" "${WATCHED[@]}" -n "$N" --timeout 300 --ready-file "$WORK/ready" >"$WORK/watch.json" 2>"$WORK/watch.err" &
W=$!
while [[ ! -f $WORK/ready ]]; do kill -0 "$W" 2>/dev/null || { cat "$WORK/watch.err" >&2; exit 1; }; sleep 0.05; done
LOG=${BENCH_LOG:-$WORK/worker.log}
busy_total() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
pticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
M0=$(busy_total) B0=0
[[ -n ${BENCH_BROKER_PID:-} ]] && B0=$(pticks "$BENCH_BROKER_PID")
if [[ $(basename "$BIN") == bench-ceiling ]]; then
	cargs=()
	[[ $CLOCK == committed ]] && cargs=(--commit-every "$BENCH_COMMIT_INTERVAL")
	"$BIN" -b "$ADDR" -i "$IN" -o "$OUT" -n "$N" -g "$GROUP" --timeout 300 "${cargs[@]}" >"$WORK/ceiling.out" 2>"$LOG" &
else
	script=$ROOT/bench/$APPNAME.lua
	[[ -n ${BENCH_SCRIPT:-} ]] && script=$(realpath -- "$BENCH_SCRIPT")
	args=("$script" --broker "kafka://$ADDR" -l "${BENCH_LOG_LEVEL:-warn}")
	[[ -z ${BENCH_SCRIPT:-} && $APPNAME == wordcount ]] && args+=(--store "lmdb://$WORK/store")
	# The worker's scratch files (data dir) land in the scratch dir too.
	(cd "$WORK" && BENCH_APP=$GROUP BENCH_IN=$IN BENCH_OUT=$OUT exec "$BIN" worker "${args[@]}") >"$LOG" 2>&1 &
fi
P=$!
PERF=
if [[ -n ${BENCH_PERF:-} ]]; then
	# shellcheck disable=SC2086 # the options are words
	perf record ${BENCH_PERF_ARGS:--F 1999} -g -o "$BENCH_PERF" -p "$P" >"$WORK/perf.out" 2>&1 &
	PERF=$!
fi
# CPU and peak memory are read while the program runs (the ceiling exits by
# itself, taking its /proc entry along): the last sample before it ends.
TICKS=0 HWM=0
while kill -0 "$W" 2>/dev/null; do
	if ! kill -0 "$P" 2>/dev/null; then # gone before its last output: no result
		# (The ceiling commits its last offsets just before it exits: the
		# committed clock's watcher may need a poll or two more to see them.)
		for _ in {1..40}; do kill -0 "$W" 2>/dev/null && sleep 0.05; done
		kill -0 "$W" 2>/dev/null || break
		kill -TERM "$W" 2>/dev/null || true
		tail -n 5 "$LOG" >&2
		break
	fi
	if t=$(awk '{print $14 + $15}' "/proc/$P/stat" 2>/dev/null) && h=$(awk '/VmHWM/ {print $2}' "/proc/$P/status" 2>/dev/null) && [[ -n $h ]]; then
		TICKS=$t HWM=$h
	fi
	sleep 0.05
done
wait "$W" || true
if t=$(awk '{print $14 + $15}' "/proc/$P/stat" 2>/dev/null) && h=$(awk '/VmHWM/ {print $2}' "/proc/$P/status" 2>/dev/null) && [[ -n $h ]]; then
	TICKS=$t HWM=$h
fi
M1=$(busy_total) B1=0
[[ -n ${BENCH_BROKER_PID:-} ]] && B1=$(pticks "$BENCH_BROKER_PID")
if [[ -n $PERF ]]; then
	kill -INT "$PERF" 2>/dev/null || true
	wait "$PERF" || true
fi
kill -TERM "$P" 2>/dev/null || true
wait "$P" || true
OTHERS=$(awk -v a="$M0" -v b="$M1" -v p="$TICKS" -v k="$((B1 - B0))" 'BEGIN {
	split(a, x, " "); split(b, y, " "); d = y[2] - x[2]
	o = d > 0 ? 100 * (y[1] - x[1] - p - k) / d : 0
	printf "%.0f", (o < 0 ? 0 : o) }')
BROKER=
[[ -n ${BENCH_BROKER_PID:-} ]] && BROKER=" broker_cpu_s=$(awk -v t="$((B1 - B0))" -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / h }')"
printf '%s %s cpu_s=%s peak_rss_kib=%s others_pct=%s%s\n' "$LABEL" "$(tr -d '\n' <"$WORK/watch.json")" \
	"$(awk -v t="$TICKS" -v h="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / h }')" "$HWM" "$OTHERS" "$BROKER"
