#!/usr/bin/env bash
# Prints what each test tier ran, from the `go test -v` logs the Makefile
# keeps, and a closing total. Exits 1 when any test failed.
set -euo pipefail
total_pass=0 total_fail=0 total_skip=0
count() { grep -cE "^ *--- $1: " "$2" || true; }
echo "=== summary ==="
for log in "$@"; do
	tier=$(basename "$log" .log)
	[[ -f $log ]] || { echo "tier $tier: no log (did not run)"; total_fail=$((total_fail + 1)); continue; }
	p=$(count PASS "$log") f=$(count FAIL "$log") s=$(count SKIP "$log")
	echo "tier $tier: $p passed, $f failed, $s skipped"
	total_pass=$((total_pass + p)) total_fail=$((total_fail + f)) total_skip=$((total_skip + s))
done
echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
[[ $total_fail -eq 0 ]]
