#!/usr/bin/env bash
# spec/support/eos_producer.sh ADDR TOPIC FROM TO RATE WORDS BASE_CS [STOP_FILE]
#
# The exactly-once specs' external producer: sends numbers FROM..TO to TOPIC
# at about RATE messages/s through kcat. Message n is keyed w<n % WORDS> with
# the JSON value {"n":n,"w":"w<k>","ts":T}, where T = (BASE_CS + 2n) / 100
# seconds: event time moves 0.02 s per message, so window contents are
# computable from n alone. Stops early, after the current batch, once
# STOP_FILE exists.
#
# kcat gives up when it loses its only broker (the broker-restart spec): it is
# started again, going on from the batch after the last one it was handed. A
# batch handed to a kcat that died may be lost in part, never sent twice (kcat
# is idempotent): the specs take the input topic, read back, as the truth.
set -uo pipefail
ADDR=$1 TOPIC=$2 FROM=$3 TO=$4 RATE=$5 WORDS=$6 BASE=$7 STOP=${8:-}
BATCH=$((RATE / 20 > 0 ? RATE / 20 : 1))
NEXT=$(mktemp)
trap 'rm -f "$NEXT"' EXIT
echo "$FROM" >"$NEXT"
stopped() { [[ -n $STOP && -e $STOP ]]; }

gen() {
	local n t k end
	n=$(<"$NEXT")
	while ((n <= TO)) && ! stopped; do
		end=$((n + BATCH - 1))
		((end <= TO)) || end=$TO
		# Recorded before the batch is written: a restart never repeats it.
		echo $((end + 1)) >"$NEXT"
		for ((; n <= end; n++)); do
			t=$((BASE + 2 * n))
			k=$((n % WORDS))
			printf 'w%d\t{"n":%d,"w":"w%d","ts":%d.%02d}\n' "$k" "$n" "$k" $((t / 100)) $((t % 100)) || return 1
		done
		sleep 0.05
	done
}

while :; do
	gen | kcat -P -b "$ADDR" -t "$TOPIC" -K $'\t' -X enable.idempotence=true -X linger.ms=5 \
		-X message.timeout.ms=600000 2>/dev/null
	rc=$?
	(($(<"$NEXT") > TO)) && exit 0
	stopped && exit 0
	echo "eos_producer: kcat exited ($rc) before number $(<"$NEXT"); starting it again" >&2
	sleep 0.5
done
