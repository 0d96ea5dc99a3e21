#!/usr/bin/env bash
# bench/failover.sh HOST:PORT [--standby N] [--keys K] [--reps R] [--guarantee G]
#
# Failover of a table partition: two workers of spec/fixtures/standby.lua
# (word count on a 2-partition topic, every count sent to OUT) on a running
# Kafka, each with its own store (two hosts, as far as the workers can tell).
# Before they start, bench-loadgen fills the table's changelog with K keys
# (--kind changelog, 2 partitions: about K/2 keys per partition). Worker a
# starts first, then b joins; once both have recovered (and, with --standby
# N > 0, each one's copy of the other's partition is current), a feed sends
# 100 words a second to each input partition ("pP-<i>", kcat -p P), and
# after 10 s worker a is killed with -9. b never held a's partition P
# before (a did hold both while alone, so killing b would find a's stale
# files): without a standby it replays P's whole changelog. The figures:
# the kill to the first output of P's words after it (OUT has
# LogAppendTime: the survivor processed P's events again), and the gap from
# the last output of P before the kill to that one. Also printed: what b replayed
# for P after the kill ("recovered table word_counts[P]: N records" in its
# log; none: the tail was empty).
# Defaults: --standby 1, --keys 1000000, --reps 1, --guarantee at_least_once.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
ADDR=${1:?usage: bench/failover.sh HOST:PORT [--standby N] [--keys K] [--reps R] [--guarantee G]}
shift
STANDBY=1 KEYS=1000000 REPS=1 GUAR=at_least_once
while (($#)); do
	case $1 in
	--standby) STANDBY=$2; shift 2 ;;
	--keys) KEYS=$2; shift 2 ;;
	--reps) REPS=$2; shift 2 ;;
	--guarantee) GUAR=$2; shift 2 ;;
	*) echo "bench/failover.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
BUILD=$(realpath -m -- "${BENCH_BUILD_DIR:-$ROOT/build-rel}")
BIN=$BUILD/fstream-lua LOADGEN=$BUILD/bench/bench-loadgen
PORT=${ADDR##*:}
WORK=$(mktemp -d)
PIDS=() FEEDS=()
cleanup() {
	for f in "${FEEDS[@]}"; do pkill -P "$f" 2>/dev/null || true; kill "$f" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	[[ -n ${KEEP:-} ]] && echo "logs kept in $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
wait_for() { # FILE PATTERN SECONDS
	local i
	for i in $(seq 1 $(($3 * 10))); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "bench/failover.sh: timed out waiting for '$2' in $1" >&2
	return 1
}

for rep in $(seq 1 "$REPS"); do
	STAMP=$(date +%s)-$$-$rep
	export APP_ID=fo-$STAMP IN=fo-in-$STAMP OUT=fo-out-$STAMP STANDBY GUARANTEE=$GUAR
	CL=$APP_ID-word_counts-changelog
	"$ROOT/scripts/kafka" create-topic "$IN" 2 --port "$PORT" >/dev/null 2>&1
	"$ROOT/scripts/kafka" create-topic "$OUT" 2 --config message.timestamp.type=LogAppendTime --port "$PORT" >/dev/null 2>&1
	"$LOADGEN" -b "$ADDR" -t "$CL" -n "$KEYS" -p 2 --kind changelog --compact >"$WORK/loadgen.out" 2>&1 ||
		{ cat "$WORK/loadgen.out" >&2; exit 1; }
	PIDS=()
	# Worker a starts first (it holds both partitions for a while: its store
	# keeps both), b joins; a is the one killed, so the survivor b never held
	# a's partition before and has nothing of it but what a standby copy gave it.
	for w in a b; do
		FSTREAM_BROKER=kafka://$ADDR "$BIN" worker "$ROOT/spec/fixtures/standby.lua" --no-web \
			--store "lmdb://$WORK/$STAMP-$w" -l info >"$WORK/$w.log" 2>&1 &
		PIDS+=($!)
		wait_for "$WORK/$w.log" "info  assigned" 120
	done
	# Both hold their partition (its replay done), and each keeps the other's copy.
	for w in a b; do wait_for "$WORK/$w.log" "recovered table word_counts" 300; done
	if ((STANDBY > 0)); then
		for w in a b; do wait_for "$WORK/$w.log" "standby of table word_counts\[[01]\] is current" 300; done
	fi
	for p in 0 1; do
		(i=0; while true; do i=$((i + 1)); echo "p$p-$((i % 5000)):p$p-$((i % 5000))"; sleep 0.01; done |
			kcat -P -b "$ADDR" -t "$IN" -p "$p" -K: -X linger.ms=1) >/dev/null 2>&1 &
		FEEDS+=($!)
	done
	sleep 10
	# a's partition: the one b was not given (b, which joined second, is
	# assigned only what it gets, eagerly or incrementally).
	if grep "info  assigned" "$WORK/b.log" | tail -1 | grep -q "$IN\[0\]"; then P=1; else P=0; fi
	SURV=b
	SEEN=$(wc -l <"$WORK/$SURV.log") # the survivor's log after the kill tells what it replayed
	KILLED=$(date +%s.%N)
	kill -9 "${PIDS[0]}"
	sleep 30
	for f in "${FEEDS[@]}"; do pkill -P "$f" 2>/dev/null || true; kill "$f" 2>/dev/null || true; done
	FEEDS=()
	sleep 2
	timeout 120 kcat -C -b "$ADDR" -t "$OUT" -o beginning -e -f '%T %s\n' 2>/dev/null | grep " p$P-" | sort -n >"$WORK/out"
	k=$(awk -v t="$KILLED" 'BEGIN { printf "%.0f", t * 1000 }')
	# The last output of P before the kill and the first after it (none: not
	# within the 30 s watched, which the figure says).
	gap=$(awk -v k="$k" '$1 <= k { last = $1 } $1 > k && !first { first = $1 }
		END { if (!first) print "none"; else printf "%.0f ms (%.0f ms after the kill)", first - last, first - k }' "$WORK/out")
	tail -n +$((SEEN + 1)) "$WORK/$SURV.log" >"$WORK/after"
	rec=$(grep -o "recovered table word_counts\[$P\]: [0-9]* records in [0-9.]* s" "$WORK/after" | tail -1 || true)
	tail_=$(grep -o "recovering table word_counts\[$P\]: [0-9]* changelog records" "$WORK/after" | tail -1 || true)
	echo "rep $rep: standby_replicas=$STANDBY guarantee=$GUAR keys=$KEYS: partition $P stood still $gap; survivor: ${rec:-no replay (tail empty)}${tail_:+ ($tail_)}"
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 3
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	PIDS=()
done
