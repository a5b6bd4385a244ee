#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/, clang, ASan + UBSan) in
# build-fuzz/ and runs each for SECONDS.
#
#   tools/fuzz.sh [SECONDS] [HARNESS...]      (default: 600 s; all harnesses)
#   harnesses: json safetensors checkpoint config csv
#
# Each run uses a scratch copy of tests/fuzz/corpus/<harness>/ (the committed
# corpus is never written), the dictionary tests/fuzz/mtrec.dict,
# -rss_limit_mb=2048 and a per-harness -max_len. Findings (crash-*, leak-*,
# oom-*, timeout-* inputs) go to build-fuzz/fuzz-findings/<harness>/ and
# logs to build-fuzz/fuzz-logs/<harness>.log. Prints one line per harness
# with the number of executions; exits 1 if any harness found anything.
#
# Environment:
#   MTREC_FUZZ_JOBS        harnesses run at once (default 1; CI uses 2)
#   MTREC_FUZZ_BUILD       build tree (default build-fuzz/)
#   MTREC_FUZZ_KEEP_GOING  1: -fork=1 with -ignore_crashes/-ignore_ooms/
#                          -ignore_timeouts, to collect several distinct
#                          findings in one run (triage, not CI)
#   CXX                    clang++ to use (default clang++)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-600}"
[ $# -gt 0 ] && shift
ALL=(json safetensors checkpoint config csv)
if [ $# -gt 0 ]; then HARNESSES=("$@"); else HARNESSES=("${ALL[@]}"); fi
JOBS="${MTREC_FUZZ_JOBS:-1}"
BUILD="${MTREC_FUZZ_BUILD:-$ROOT/build-fuzz}"
KEEP_GOING="${MTREC_FUZZ_KEEP_GOING:-0}"

case "$SECONDS_EACH" in
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$SECONDS_EACH'" >&2; exit 2 ;;
esac
max_len_of() {
  case "$1" in
    json) echo 4096 ;;
    safetensors) echo 8192 ;;
    checkpoint) echo 8192 ;;
    config) echo 4096 ;;
    csv) echo 4096 ;;
    *) echo "fuzz.sh: unknown harness '$1' (have: ${ALL[*]})" >&2; return 1 ;;
  esac
}
targets=()
for h in "${HARNESSES[@]}"; do
  max_len_of "$h" >/dev/null || exit 2
  targets+=("mtrec_fuzz_$h")
done

# ---- build ---------------------------------------------------------------------
echo "fuzz.sh: building ${targets[*]} in $BUILD"
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE= \
  -DMTREC_BUILD_FUZZERS=ON -DMTREC_WITH_OPENMP=OFF \
  -DMTREC_BUILD_TESTS=OFF -DMTREC_BUILD_EXAMPLES=OFF -DMTREC_BUILD_BENCH=OFF >"$BUILD/fuzz-configure.log" 2>&1 \
  || { cat "$BUILD/fuzz-configure.log" >&2; echo "fuzz.sh: configure failed" >&2; exit 2; }
cmake --build "$BUILD" -j "${MTREC_JOBS:-2}" --target "${targets[@]}" || { echo "fuzz.sh: build failed" >&2; exit 2; }

# ---- run -----------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mtrec-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOGS="$BUILD/fuzz-logs"
FINDINGS="$BUILD/fuzz-findings"
mkdir -p "$LOGS"
touch "$WORK/.stamp"  # findings are the artifacts newer than this

run_one() {
  local h="$1" ml
  ml="$(max_len_of "$h")"
  local corpus="$WORK/corpus/$h" art="$FINDINGS/$h" log="$LOGS/$h.log"
  mkdir -p "$corpus" "$art"
  cp "$ROOT/tests/fuzz/corpus/$h/"* "$corpus/" 2>/dev/null || true
  local extra=()
  if [ "$KEEP_GOING" = "1" ]; then
    extra=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
  fi
  local start=$SECONDS rc
  # TMPDIR: the checkpoint harness's scratch file goes away with $WORK.
  TMPDIR="$WORK" ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    "$BUILD/tests/fuzz/mtrec_fuzz_$h" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=30 \
      -dict="$ROOT/tests/fuzz/mtrec.dict" -max_len="$ml" -print_final_stats=1 \
      -artifact_prefix="$art/" "${extra[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  echo "$rc $(( SECONDS - start ))" >"$WORK/$h.rc"
}

pids=()
for h in "${HARNESSES[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "fuzz.sh: $h for ${SECONDS_EACH}s (log: $LOGS/$h.log)"
  run_one "$h" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done

# ---- report ------------------------------------------------------------------------
status=0
echo
echo "---- fuzz results (${SECONDS_EACH}s each) ----"
for h in "${HARNESSES[@]}"; do
  log="$LOGS/$h.log"
  read -r rc took <"$WORK/$h.rc" || { rc=99; took=0; }
  execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{s += $2} END {print s + 0}')"
  if [ "$execs" = "0" ]; then
    # fork mode and early exits print "#N ..." progress lines instead.
    execs="$(grep -oE '^#[0-9]+' "$log" | tail -n1 | tr -d '#')"
  fi
  found="$(find "$FINDINGS/$h" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'oom-*' \
    -o -name 'timeout-*' \) -newer "$WORK/.stamp" 2>/dev/null | sort)"
  nfound="$(printf '%s' "$found" | grep -c . || true)"
  if [ "$rc" = "0" ] && [ "$nfound" = "0" ]; then
    result="clean"
  else
    result="FINDING (exit $rc, $nfound input(s) in $FINDINGS/$h/)"
    status=1
    grep -E '^==[0-9]+==ERROR|SUMMARY: |runtime error|out-of-memory|ERROR: libFuzzer' "$log" | sort | uniq -c | head -n 8 | sed 's/^/    /'
    printf '%s\n' "$found" | sed 's/^/    input: /'
  fi
  printf '%-12s %10s executions in %4ss  %s\n' "$h" "${execs:-?}" "$took" "$result"
done
exit "$status"
