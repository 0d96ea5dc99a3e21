#!/usr/bin/env bash
# spec/support/eos_producer.sh ADDR TOPIC FROM TO RATE WORDS BASE_CS [STOP_FILE]
#
# The exactly-once specs' external producer: sends numbers FROM..TO to TOPIC
# at about RATE messages/s through kcat, in batches of RATE/20 every 50 ms.
# The messages are spec/support/numbered.sh's with event time moving 0.02 s
# per message (T = (BASE_CS + 2n) / 100 s). Stops early, after the current
# batch, once STOP_FILE exists. kcat is started again if it exits (the
# broker-restart spec), going on from the batch after the last one it was
# handed.
set -uo pipefail
ADDR=$1 TOPIC=$2 FROM=$3 TO=$4 RATE=$5 WORDS=$6 BASE=$7 STOP=${8:-}
TS_NUM=2 TS_DEN=1
source "$(dirname -- "${BASH_SOURCE[0]}")/numbered.sh"
BATCH=$((RATE / 20 > 0 ? RATE / 20 : 1))
NEXT=$(mktemp)
trap 'rm -f "$NEXT"' EXIT
echo "$FROM" >"$NEXT"
stopped() { [[ -n $STOP && -e $STOP ]]; }
finished() { (($(<"$NEXT") > TO)) || stopped; }

gen() {
	local n end
	n=$(<"$NEXT")
	while ((n <= TO)) && ! stopped; do
		end=$((n + BATCH - 1))
		((end <= TO)) || end=$TO
		# Recorded before the batch is written: a restart never repeats it.
		echo $((end + 1)) >"$NEXT"
		emit "$n" "$end" || return 1
		n=$((end + 1))
		sleep 0.05
	done
}

send eos_producer gen finished "$NEXT"
