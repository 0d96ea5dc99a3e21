#!/usr/bin/env bash
# bench/join.sh HOST:PORT [ROUNDS]
#
# The stream-table join next to the stateless scenario, in one run on one
# input. Loads BENCH_N (default 1,000,000) JSON orders with bench-loadgen
# (--kind json --partition-by key: keyed by account "a-0".."a-999", placed by
# murmur2 as a table needs) into join-in-STAMP (8 partitions), and 1,000
# accounts keyed alike into join-accounts-STAMP; then drains the input ROUNDS
# times (default 3) with bench/stateless.lua and with bench/join_app.lua in
# turn, through bench/drain.sh (a fresh group and output topic each time).
# Needs a release build (BENCH_BUILD_DIR, default build-rel) and a broker
# started with `scripts/kafka start --port PORT`.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
ADDR=$1 ROUNDS=${2:-3}
N=${BENCH_N:-1000000}
BUILD=$ROOT/${BENCH_BUILD_DIR:-build-rel}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)-$$
IN=join-in-$STAMP ACC=join-accounts-$STAMP
"$BUILD/bench/bench-loadgen" -b "$ADDR" -t "$IN" -n "$N" -p 8 --kind json --partition-by key
"$ROOT/scripts/kafka" create-topic "$ACC" 8 --port "${ADDR##*:}" >/dev/null 2>&1
for i in $(seq 0 999); do printf 'a-%d\t{"tier":"t%d"}\n' "$i" $((i % 3)); done |
	kcat -P -b "$ADDR" -t "$ACC" -K $'\t' -X topic.partitioner=murmur2_random
STORE=$(mktemp -d)
trap 'rm -rf "$STORE"' EXIT
for r in $(seq 1 "$ROUNDS"); do
	BENCH_N=$N BENCH_WATCH=$BUILD/bench/bench-watch "$ROOT/bench/drain.sh" "$BUILD/fstream-lua" "$IN" "$ADDR" "stateless-$r"
	BENCH_N=$N BENCH_WATCH=$BUILD/bench/bench-watch BENCH_SCRIPT=$ROOT/bench/join_app.lua BENCH_ACCOUNTS=$ACC \
		BENCH_STORE=$STORE/$r "$ROOT/bench/drain.sh" "$BUILD/fstream-lua" "$IN" "$ADDR" "join-$r"
done
