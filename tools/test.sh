#!/usr/bin/env bash
# Configures build/ (Release, tests and examples on), builds it and runs ctest:
#   bash tools/test.sh                 # everything
#   bash tools/test.sh -L unit         # extra arguments go to ctest
# MTREC_BUILD_BENCH=ON also builds the benchmarks (needs libbenchmark-dev).
# MTREC_JOBS sets build and ctest parallelism (default 2).
# Installs missing Debian packages when run as root; otherwise prints the
# apt-get command to run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=tools/deps.sh
source "$ROOT/tools/deps.sh"

BENCH="${MTREC_BUILD_BENCH:-OFF}"
pkgs=(g++ make cmake libeigen3-dev libxsimd-dev catch2 python3 libhnswlib-dev libcpp-httplib-dev nlohmann-json3-dev pkg-config)
case "$BENCH" in
  ON|on|1|TRUE|true|YES|yes) BENCH=ON; pkgs+=(libbenchmark-dev) ;;
  *) BENCH=OFF ;;
esac
mtrec_require_packages "${pkgs[@]}"

BUILD="$ROOT/build"
JOBS="${MTREC_JOBS:-2}"

echo "==> configure ($BUILD)"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DMTREC_BUILD_TESTS=ON -DMTREC_BUILD_EXAMPLES=ON -DMTREC_BUILD_BENCH="$BENCH" -DMTREC_WITH_HNSWLIB=ON
echo "==> build (-j$JOBS)"
cmake --build "$BUILD" -j "$JOBS"
echo "==> ctest"
cd "$BUILD"
ctest --output-on-failure -j "$JOBS" "$@"
