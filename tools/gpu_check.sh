#!/usr/bin/env bash
# The whole GPU verification of the CUDA backend in one command, for a machine
# with an NVIDIA GPU, nvcc and (for step 4) PyTorch with CUDA, and no Debian
# packages: the headers the build needs travel in .gpu-deps/ (git-ignored).
#
#   bash tools/gpu_check.sh --prepare     # here, once: copy Eigen, xsimd and Catch2 into .gpu-deps/include
#   bash tools/gpu_check.sh [OUT_DIR]     # on the GPU machine (the device tool: carry [".gpu-deps"])
#
# Steps, in order (each one's output goes to OUT_DIR/log.txt):
#   1. build Release with CUDA: nvcc -O3, the GPU's own architecture (else sm_90):
#      the CUDA tests, the CUDA benchmark, the CUDA example, a single-header consumer
#   2. the CUDA tests: the op table's Cuda column against reference, whole-model
#      agreement with the CPU, checkpoints GPU <-> CPU, concurrent predict, bad input, OOM
#      (plus the example and the consumer); a checkpoint written on the GPU is
#      opened with the official `safetensors` package when Python has it
#   3. the benchmarks of the three workloads (small, ref, large) on the GPU and
#      the embedding kernels against the copy bandwidth (CUDA events, L2 flushed)
#   4. bench/compare_pytorch.py --device cuda: the same workloads in PyTorch eager
#      CUDA in the same run, side by side, with the targets marked
# It stops after 8 minutes at most (each step has its own timeout), writes
# OUT_DIR/log.txt and OUT_DIR/table.md, and prints the table last.
# OUT_DIR defaults to $OUT (the device tool's output folder), else build-gpu/check.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEPS="$ROOT/.gpu-deps"

if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$DEPS"
  mkdir -p "$DEPS/include"
  for d in /usr/include/eigen3 /usr/include/xsimd /usr/include/catch2; do
    if [ ! -d "$d" ]; then
      echo "gpu_check --prepare: $d is missing (apt-get install libeigen3-dev libxsimd-dev catch2)" >&2
      exit 1
    fi
    cp -r "$d" "$DEPS/include/"
  done
  # Eigen's headers live under eigen3/ (Eigen/...): the build adds that folder too.
  du -sh "$DEPS"
  echo "gpu_check --prepare: headers in $DEPS; carry \".gpu-deps\" to the GPU machine"
  exit 0
fi

OUTDIR="${1:-${OUT:-$ROOT/build-gpu/check}}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/log.txt"
TABLE="$OUTDIR/table.md"
: > "$LOG"
BUILD="$ROOT/build-gpu"
mkdir -p "$BUILD"
START=$(date +%s)
log() { echo "$@" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }

NVCC="${NVCC:-}"
if [ -z "$NVCC" ]; then
  if command -v nvcc >/dev/null 2>&1; then NVCC="$(command -v nvcc)"; else NVCC=/usr/local/cuda/bin/nvcc; fi
fi
INC=(-I "$ROOT/include" -I "$ROOT/tests" -I "$ROOT/bench")
for d in "$DEPS/include/eigen3" "$DEPS/include" /usr/include/eigen3; do
  [ -d "$d" ] && INC+=(-I "$d")
done
ARCH=(-arch=native)
if ! nvidia-smi >/dev/null 2>&1; then ARCH=(-gencode arch=compute_90,code=sm_90); fi
FLAGS=(-std=c++17 -O3 "${ARCH[@]}" -DMTREC_WITH_CUDA=1 -DEIGEN_NO_CUDA -DEIGEN_DONT_PARALLELIZE
       -diag-suppress 1675,68,177,20012,20013,20015 -Xcompiler -fopenmp,-march=native)
LIBS=(-lcublas -lgomp -lpthread)

{
  echo "# mtrec gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  "$NVCC" --version | tail -n 2 | sed 's/^/nvcc: /'
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores"
  python3 -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n1
} | tee -a "$LOG"

declare -A STATUS
step() {  # step NAME TIMEOUT_S command...: runs it, logs it, records ok/FAILED/timeout
  local name="$1" to="$2"
  shift 2
  log ""
  log "==== $name ($(elapsed) s in)"
  local t0=$(date +%s)
  timeout "$to" "$@" >>"$LOG" 2>&1
  local rc=$?
  local s=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then STATUS[$name]="ok (${s} s)"; elif [ $rc -eq 124 ]; then STATUS[$name]="TIMEOUT after ${s} s"; else STATUS[$name]="FAILED rc=$rc (${s} s)"; fi
  log "==== $name: ${STATUS[$name]}"
  return $rc
}

# ---- 1. build ------------------------------------------------------------------------------------
build_all() {
  local pids=() rc=0
  "$NVCC" "${FLAGS[@]}" "${INC[@]}" -DMTREC_FIXTURE_DIR="\"$ROOT/tests/fixtures\"" -c "$ROOT/tests/support/catch_main.cpp" -o "$BUILD/catch_main.o" & pids+=($!)
  "$NVCC" "${FLAGS[@]}" "${INC[@]}" -DMTREC_FIXTURE_DIR="\"$ROOT/tests/fixtures\"" -c "$ROOT/tests/cuda/test_cuda_ops.cu" -o "$BUILD/test_cuda_ops.o" & pids+=($!)
  "$NVCC" "${FLAGS[@]}" "${INC[@]}" -DMTREC_FIXTURE_DIR="\"$ROOT/tests/fixtures\"" -c "$ROOT/tests/cuda/test_cuda_model.cu" -o "$BUILD/test_cuda_model.o" & pids+=($!)
  "$NVCC" "${FLAGS[@]}" "${INC[@]}" "$ROOT/bench/bench_cuda.cu" -o "$BUILD/mtrec_bench_cuda" "${LIBS[@]}" & pids+=($!)
  "$NVCC" "${FLAGS[@]}" "${INC[@]}" "$ROOT/examples/cuda_train.cu" -o "$BUILD/cuda_train" "${LIBS[@]}" & pids+=($!)
  # the consumer sees single_include/ only (plus the third-party headers)
  local SINC=(-I "$ROOT/single_include")
  for d in "$DEPS/include/eigen3" "$DEPS/include" /usr/include/eigen3; do [ -d "$d" ] && SINC+=(-I "$d"); done
  "$NVCC" "${FLAGS[@]}" "${SINC[@]}" "$ROOT/tests/consumers/cuda_single_header.cu" -o "$BUILD/cuda_single_header" "${LIBS[@]}" & pids+=($!)
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc -eq 0 ] || return 1
  "$NVCC" "${ARCH[@]}" "$BUILD/catch_main.o" "$BUILD/test_cuda_ops.o" "$BUILD/test_cuda_model.o" -o "$BUILD/mtrec_cuda_tests" "${LIBS[@]}"
}
step "1 build (nvcc -O3)" 300 build_all
BUILT=$?

# ---- 2. tests ------------------------------------------------------------------------------------------
CKPT="$OUTDIR/cuda_train.safetensors"
if [ $BUILT -eq 0 ]; then
  step "2a CUDA tests" 150 "$BUILD/mtrec_cuda_tests" "[cuda]" --durations yes
  step "2b single-header consumer" 30 "$BUILD/cuda_single_header"
  step "2c example cuda_train --fast" 60 "$BUILD/cuda_train" --fast --save "$CKPT"
  if python3 -c 'import safetensors' >/dev/null 2>&1 && [ -f "$CKPT" ]; then
    step "2d checkpoint opens with the safetensors package" 30 python3 -c "
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework='numpy') as f:
    keys = list(f.keys()); meta = f.metadata() or {}
    n = sum(f.get_tensor(k).size for k in keys)
print('safetensors opened', len(keys), 'tensors,', n, 'values; metadata keys:', sorted(meta)[:6])
" "$CKPT"
  fi
fi

# ---- 3. benchmarks ----------------------------------------------------------------------------------------
BENCH_JSON="$OUTDIR/bench_cuda.json"
if [ $BUILT -eq 0 ]; then
  step "3 mtrec_bench_cuda (small, ref, large + kernels)" 120 bash -o pipefail -c \
    "'$BUILD/mtrec_bench_cuda' --json '$BENCH_JSON' | tee '$OUTDIR/bench.txt'"
fi

# ---- 4. side by side with PyTorch eager CUDA --------------------------------------------------------------
COMPARE_OUT="$OUTDIR/compare.txt"
left=$(( 470 - $(elapsed) ))
if [ $BUILT -eq 0 ] && [ $left -gt 30 ]; then
  step "4 compare_pytorch.py --device cuda" "$left" bash -c \
    "set -o pipefail; python3 '$ROOT/bench/compare_pytorch.py' --device cuda --bench-cuda '$BUILD/mtrec_bench_cuda' --json '$OUTDIR/compare.json' | tee '$COMPARE_OUT'"
fi

# ---- the table -------------------------------------------------------------------------------------------
{
  echo "## mtrec gpu_check ($(elapsed) s)"
  echo
  head -n 7 "$LOG" | sed 's/^/    /'
  echo
  echo "| step | result |"
  echo "|---|---|"
  for k in "1 build (nvcc -O3)" "2a CUDA tests" "2b single-header consumer" "2c example cuda_train --fast" \
           "2d checkpoint opens with the safetensors package" "3 mtrec_bench_cuda (small, ref, large + kernels)" \
           "4 compare_pytorch.py --device cuda"; do
    [ -n "${STATUS[$k]:-}" ] && echo "| $k | ${STATUS[$k]} |"
  done
  echo
  # Catch2's summary line and the skip lines
  grep -E "^(All tests passed|test cases:)|mtrec-cuda: (skipped|op table|GEMM|device)" "$LOG" | sed 's/^/    /' | head -n 20
  grep -E "^[^ ].*FAILED:|^  CHECK|with expansion" "$LOG" | head -n 20 | sed 's/^/    /'
  if [ -f "$COMPARE_OUT" ]; then
    echo
    cat "$COMPARE_OUT"
  elif [ -f "$OUTDIR/bench.txt" ]; then
    echo
    echo "mtrec alone (the PyTorch comparison did not run):"
    cat "$OUTDIR/bench.txt"
  fi
} > "$TABLE"
echo
cat "$TABLE"
