#!/usr/bin/env bash
# Builds mtrec's main example in build/ (Release) and runs it:
#   bash tools/quickstart.sh            # examples/quickstart.cpp (layers_tour.cpp if absent)
#   bash tools/quickstart.sh --fast     # extra arguments go to the program
# Installs missing Debian packages when run as root; otherwise prints the
# apt-get command to run. MTREC_JOBS sets the build parallelism (default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=tools/deps.sh
source "$ROOT/tools/deps.sh"

mtrec_require_packages g++ make cmake libeigen3-dev libxsimd-dev

BUILD="$ROOT/build"
JOBS="${MTREC_JOBS:-2}"
cfg=(-DCMAKE_BUILD_TYPE=Release -DMTREC_BUILD_EXAMPLES=ON)
# A fresh tree needs no test dependencies; an existing one (e.g. from
# tools/test.sh) keeps its test setting so nothing is rebuilt needlessly.
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cfg+=(-DMTREC_BUILD_TESTS=OFF)
fi

echo "==> configure ($BUILD)"
cmake -S "$ROOT" -B "$BUILD" "${cfg[@]}"
EXAMPLE=quickstart
if [ ! -f "$ROOT/examples/quickstart.cpp" ]; then
  EXAMPLE=layers_tour
fi
echo "==> build $EXAMPLE (-j$JOBS)"
cmake --build "$BUILD" -j "$JOBS" --target "$EXAMPLE"
echo "==> run $EXAMPLE $*"
"$BUILD/examples/$EXAMPLE" "$@"
