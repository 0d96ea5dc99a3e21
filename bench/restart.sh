#!/usr/bin/env bash
# bench/restart.sh HOST:PORT [--worker-id auto|none] [--rounds R]
#
# How long a worker's partitions stand still when it is killed with -9 and its
# supervisor restarts it: `fstream-lua worker spec/fixtures/relay.lua
# --workers 2` on fresh 4-partition topics of a running Kafka (the output
# with LogAppendTime), fed 200 messages a second (kcat); after 15 s worker 1
# is killed, R times, 20 s apart. Prints, per kill, the longest gap between
# two outputs of a partition that worker 1 held (the kill to the first event
# after the restart, plus at most the 5 ms between two inputs), and whether
# worker 2 was rebalanced ("revoking" in its log).
# --worker-id auto (default): static members; none: dynamic members.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
ADDR=${1:?usage: bench/restart.sh HOST:PORT [--worker-id auto|none] [--rounds R]}
shift
WID=auto ROUNDS=3
while (($#)); do
	case $1 in
	--worker-id) WID=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	*) echo "bench/restart.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
BIN=$(realpath -m -- "${BENCH_BUILD_DIR:-$ROOT/build-rel}")/fstream-lua
WORK=$(mktemp -d)
S="" FEED=""
trap '[[ -z $FEED ]] || { pkill -P "$FEED"; kill "$FEED"; } 2>/dev/null; [[ -z $S ]] || kill -TERM "$S" 2>/dev/null; sleep 1; rm -rf "$WORK"' EXIT
STAMP=$(date +%s)-$$
IN=rs-in-$STAMP OUT=rs-out-$STAMP
"$ROOT/scripts/kafka" create-topic "$IN" 4 --port "${ADDR##*:}" >/dev/null 2>&1
"$ROOT/scripts/kafka" create-topic "$OUT" 4 --config message.timestamp.type=LogAppendTime --port "${ADDR##*:}" >/dev/null 2>&1
APP_ID=rs-$STAMP IN=$IN OUT=$OUT "$BIN" worker "$ROOT/spec/fixtures/relay.lua" --workers 2 --worker-id "$WID" \
	--broker "kafka://$ADDR" --no-web --store "lmdb://$WORK/store" -l info >"$WORK/log" 2>&1 &
S=$!
for _ in $(seq 1 300); do
	[[ $(grep -c "info  assigned" "$WORK/log") -ge 2 ]] && break
	sleep 0.1
done
(i=0; while true; do i=$((i + 1)); echo "$i"; sleep 0.005; done | kcat -P -b "$ADDR" -t "$IN" -X linger.ms=1) >/dev/null 2>&1 &
FEED=$!
sleep 15
for r in $(seq 1 "$ROUNDS"); do
	P=$(grep -o 'worker 1 started (pid [0-9]*)' "$WORK/log" | tail -1 | grep -o '[0-9]*)' | tr -d ')')
	PARTS=$(grep "\[w1\] info  assigned" "$WORK/log" | tail -1 | grep -o "$IN\[[0-9]*\]" | grep -o '\[[0-9]*\]' | tr -d '[]' | tr '\n' ' ')
	KILLED=$(date +%s.%N)
	kill -9 "$P"
	sleep 20
	echo "kill $r at $KILLED: worker 1 (pid $P) held partitions $PARTS"
	echo "$KILLED $PARTS" >>"$WORK/kills"
done
pkill -P "$FEED" 2>/dev/null || true # its loop and kcat, then itself
kill "$FEED" 2>/dev/null || true
FEED=""
sleep 2
timeout 120 kcat -C -b "$ADDR" -t "$OUT" -o beginning -e -f '%p %T\n' 2>/dev/null | sort -n -k1,1 -k2,2 >"$WORK/out"
while read -r killed parts; do
	k=$(awk -v t="$killed" 'BEGIN { printf "%.0f", t * 1000 }')
	for p in $parts; do
		awk -v p="$p" -v k="$k" '$1 == p && $2 >= k - 1000 && $2 <= k + 15000 { if (prev && $2 - prev > gap) gap = $2 - prev; prev = $2 }
			END { printf "  partition %s: longest output gap around the kill %.0f ms\n", p, gap }' "$WORK/out"
	done
done <"$WORK/kills"
echo "worker 2 revocations after the start: $(grep -c '\[w2\] info  revoking' "$WORK/log")"
grep -E "group.instance.id|\[supervisor\]" "$WORK/log" | head -20
