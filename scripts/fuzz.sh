#!/usr/bin/env bash
# Bounded fuzzing of the HTTP parsers (request head, response head, chunked decoder).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      default 60
#
# 1. A long proptest pass: tests/http_props.rs in release with PROPTEST_CASES (default 20000)
#    cases per property (CI runs the same properties with the default 256 cases in cargo test).
# 2. If cargo-fuzz is installed (`cargo install cargo-fuzz`), each libFuzzer target under
#    tests/fuzz/ for SECONDS_PER_TARGET seconds. Stable toolchain: RUSTC_BOOTSTRAP=1 lets
#    cargo-fuzz pass its -Z flags; no sanitizer (-s none, the crate has no unsafe on these
#    paths) and debug assertions on. Corpora persist in target/fuzz-corpus/<target>, seeded
#    from tests/fuzz/seeds/<target>/ (first byte of each input selects limits/options).
# Prints the execution count per target; exits non-zero on the first failure (a crash input
# is left in tests/fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
cases="${PROPTEST_CASES:-20000}"

echo "=== proptest: $cases cases per property (release)"
start=$(date +%s)
PROPTEST_CASES="$cases" cargo test --release --test http_props 2>&1 | grep -E "^test |test result"
echo "proptest: $((8 * cases)) cases over 8 properties in $(( $(date +%s) - start )) s"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "=== cargo-fuzz not installed: skipping libFuzzer (cargo install cargo-fuzz)"
    exit 0
fi

for target in request_head response_head chunked; do
    corpus="target/fuzz-corpus/$target"
    mkdir -p "$corpus"
    cp -n tests/fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "=== libFuzzer: $target for ${secs}s"
    log=$(mktemp)
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz -s none --debug-assertions \
        "$target" "$corpus" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        rm -f "$log"
        echo "FAILED: $target"
        exit 1
    fi
    runs=$(grep -E "stat::number_of_executed_units" "$log" | awk '{print $2}' | tail -1)
    cov=$(grep -E "^#[0-9]+.*(DONE|pulse)" "$log" | tail -1 | grep -oE "cov: [0-9]+" || true)
    echo "$target: ${runs:-?} executions in ${secs}s, ${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) inputs"
    rm -f "$log"
done
