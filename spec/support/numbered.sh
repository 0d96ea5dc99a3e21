# spec/support/numbered.sh: sourced by the numbered producers,
# spec/support/eos_producer.sh (the exactly-once specs) and
# chaos/soak_producer.sh (the soak). Both send the same messages: number n
# keyed w<n % WORDS> with the JSON value {"n":n,"w":"w<k>","ts":T}, event time
# T = (BASE + TS_NUM * n / TS_DEN) / 100 s, so that window contents are
# computable from n alone (spec/support/eos.lua's checkers, chaos/soak.lua's
# arithmetic). The sourcing script sets ADDR, TOPIC, WORDS, BASE, TS_NUM and
# TS_DEN.

# emit FROM TO: messages FROM..TO, one a line (key, tab, value) for kcat -K.
emit() {
	local n t k
	for ((n = $1; n <= $2; n++)); do
		t=$((BASE + TS_NUM * n / TS_DEN))
		k=$((n % WORDS))
		printf 'w%d\t{"n":%d,"w":"w%d","ts":%d.%02d}\n' "$k" "$n" "$k" $((t / 100)) $((t % 100)) || return 1
	done
}

# send NAME GEN FINISHED NEXT_FILE: runs `GEN | kcat` (idempotent) until the
# command FINISHED succeeds. kcat gives up when it loses its only broker; it
# is started again and GEN goes on from the number in NEXT_FILE (written by
# GEN before each batch: a batch handed to a kcat that died may be lost in
# part, never sent twice, so the checkers take the input topic, read back, as
# the truth).
send() {
	local name=$1 gen=$2 finished=$3 next=$4 rc
	while :; do
		"$gen" | kcat -P -b "$ADDR" -t "$TOPIC" -K $'\t' -X enable.idempotence=true -X linger.ms=5 \
			-X message.timeout.ms=600000 2>/dev/null
		rc=$?
		"$finished" && exit 0
		echo "$name: kcat exited ($rc) before number $(<"$next"); starting it again" >&2
		sleep 0.5
	done
}
