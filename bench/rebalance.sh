#!/usr/bin/env bash
# bench/rebalance.sh HOST:PORT [--assignor A] [--partitions N] [--rate R]
#
# Which partitions pause, and for how long, when a third worker joins a group
# of two: bench/rebalance_app.lua (every event to OUT's partition of the same
# number; OUT has LogAppendTime, so an output's timestamp is when its event
# was processed; plus a count table) on fresh topics of a running Kafka with N
# partitions (default 12), fed about R messages a second (default 2000, kcat,
# keyed by number). Workers 1 and 2 (static members rb-1, rb-2) run 15 s, then worker 3
# starts; 25 s later everything stops. Prints, per input partition, the
# longest gap between two of its outputs in the 20 s after worker 3 started,
# next to the longest one in the 10 s before (the load's own jitter), and who
# holds it at the end (3: it moved to the joiner). --assignor: FSTREAM_PARTITION_ASSIGNOR for every
# worker (cooperative-sticky, the default, or range).
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
ADDR=${1:?usage: bench/rebalance.sh HOST:PORT [--assignor A] [--partitions N] [--rate R]}
shift
ASSIGNOR=cooperative-sticky N=12 RATE=2000
while (($#)); do
	case $1 in
	--assignor) ASSIGNOR=$2; shift 2 ;;
	--partitions) N=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	*) echo "bench/rebalance.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
BIN=$(realpath -m -- "${BENCH_BUILD_DIR:-$ROOT/build-rel}")/fstream-lua
WORK=$(mktemp -d)
PIDS=() FEED=""
cleanup() {
	[[ -z $FEED ]] || { pkill -P "$FEED"; kill "$FEED"; } 2>/dev/null || true
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 2
	[[ -n ${BENCH_KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
[[ -z ${BENCH_KEEP:-} ]] || echo "logs in $WORK"
STAMP=$(date +%s)-$$
IN=rb-in-$STAMP OUT=rb-out-$STAMP
"$ROOT/scripts/kafka" create-topic "$IN" "$N" --port "${ADDR##*:}" >/dev/null 2>&1
"$ROOT/scripts/kafka" create-topic "$OUT" "$N" --config message.timestamp.type=LogAppendTime --port "${ADDR##*:}" >/dev/null 2>&1
start() {
	APP_ID=rb-$STAMP IN=$IN OUT=$OUT PARTITIONS=$N FSTREAM_PARTITION_ASSIGNOR=$ASSIGNOR \
		"$BIN" worker "$ROOT/bench/rebalance_app.lua" --worker-id "rb-$1" --broker "kafka://$ADDR" --no-web \
		--store "lmdb://$WORK/store-$1" -l info >"$WORK/log$1" 2>&1 &
	PIDS+=($!)
}
start 1
start 2
for _ in $(seq 1 300); do
	[[ $(cat "$WORK/log1" "$WORK/log2" | grep -c "info  assigned [1-9]") -ge 2 ]] && break
	sleep 0.1
done
# About RATE messages a second (RATE/100 every 10 ms, less on a busy machine),
# keyed by their number: keyless ones would go in bursts to one partition at
# a time (the sticky partitioner), which would look like pauses.
(i=0; step=$((RATE / 100)); while true; do
	for ((j = 0; j < step; j++)); do printf '%d\t%d\n' $i $i; i=$((i + 1)); done
	sleep 0.01
done | kcat -P -b "$ADDR" -t "$IN" -K '\t' -X linger.ms=5) >/dev/null 2>&1 &
FEED=$!
sleep 15
JOINED=$(date +%s%3N)
start 3
sleep 25
pkill -P "$FEED" 2>/dev/null || true
kill "$FEED" 2>/dev/null || true
FEED=""
sleep 2
timeout 120 kcat -C -b "$ADDR" -t "$OUT" -o beginning -e -f '%T %s\n' 2>/dev/null | sort -n -k2,2 -k1,1 >"$WORK/out"
# Who holds partition $1 at the end: the workers whose last assignment or
# revocation naming it is an assignment.
owner() {
	local who="" w
	for w in 1 2 3; do
		last=$(grep -E "info  (assigned|revoking)" "$WORK/log$w" | grep -F "$IN[$1]" | tail -1 || true)
		[[ $last == *"info  assigned"* ]] && who="$who$w"
	done
	echo "${who:-?}"
}
echo "assignor $ASSIGNOR, $N partitions, ~$RATE msg/s; worker 3 started at $JOINED"
printf "%-9s %-8s %-12s %-14s\n" partition "then by" "gap before" "gap after join"
for p in $(seq 0 $((N - 1))); do
	after=$(owner "$p")
	awk -v p="$p" -v j="$JOINED" '$2 == p && $1 >= j - 10000 && $1 < j { if (b) { if ($1 - b > gb) gb = $1 - b } b = $1 }
		$2 == p && $1 >= j && $1 <= j + 20000 { if (a) { if ($1 - a > ga) ga = $1 - a } else if (b) { ga = $1 - b } a = $1 }
		END { printf "%-9s %-8s %-12s %-14s\n", p, "'"$after"'", gb " ms", ga " ms" }' "$WORK/out"
done
echo "revocations: w1 $(grep -c 'info  revoking' "$WORK/log1"), w2 $(grep -c 'info  revoking' "$WORK/log2"); lost: $(cat "$WORK"/log? | grep -c 'warn  lost') ; resets: $(cat "$WORK"/log? | grep -c 'reset to their last')"
grep -h "partition assignor" "$WORK/log1" | head -1
