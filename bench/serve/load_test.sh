#!/usr/bin/env bash
# The mtrec-serve load test (docs/serving.md): the MovieLens model, one user
# against N = 200 candidates, wrk on loopback.
#
#   bash bench/serve/load_test.sh BUILD_DIR [MOVIELENS_DIR] [SECONDS]
#
# Trains the model with mtrec-train (like, rating and next:retrieval:movie;
# movie, genres and title item-side; an HNSW index beside the checkpoint
# when mtrec-train has hnswlib), starts mtrec-serve with 2 threads, then runs
# wrk (2 threads, MTREC_WRK_CONNECTIONS = 2 connections) against /v1/rank and /v1/retrieve, and the
# same again while a client reloads the model every second. Prints wrk's
# summaries, then a table of QPS, p50 and p99.
set -euo pipefail
BUILD="$(cd "$1" && pwd)"
ML="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/shared/data/movielens}"
SECS="${3:-10}"
CONN="${MTREC_WRK_CONNECTIONS:-2}"  # one keep-alive connection per server thread
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="${MTREC_LOAD_DIR:-/tmp/mtrec_load_test}"
command -v wrk > /dev/null || { echo "wrk is not installed (Debian: apt-get install -y wrk)" >&2; exit 2; }
mkdir -p "$W"
python3 "$HERE/make_movielens_csv.py" "$ML" "$W"
HNSW=()
if "$BUILD/examples/mtrec-train" --help | grep -q -- "--hnsw"; then HNSW=(--hnsw); fi
if [ ! -f "$W/ml.safetensors" ]; then
  "$BUILD/examples/mtrec-train" --train "$W/ratings_serving.csv" --split 0.9,0.1,0 --id user --id movie \
    --bag 'genres:|' --text title:8 --seq 'history:|:10' --task like:binary --task rating:regression \
    --task next:retrieval:movie --item-fields movie,genres,title --model mmoe --dim 16 --epochs 2 --batch 256 \
    --threads 2 --quiet --save "$W/ml.safetensors" "${HNSW[@]}"
fi
INDEX=()
[ -f "$W/ml.safetensors.next.hnsw" ] && INDEX=(--index "$W/ml.safetensors.next.hnsw")
rm -f "$W/port"
"$BUILD/examples/mtrec-serve" --load "$W/ml.safetensors" --port 0 --port-file "$W/port" --threads 2 "${INDEX[@]}" \
  2> "$W/serve.err" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do [ -s "$W/port" ] && break; sleep 0.05; done
URL="http://127.0.0.1:$(cat "$W/port")"
run() {  # name endpoint body
  echo "== $1"
  MTREC_BODY="$W/$3" wrk -t2 -c"$CONN" -d"${SECS}s" --latency -s "$HERE/post.lua" "$URL$2" | tee "$W/$1.txt"
}
run rank /v1/rank rank_body.json
run retrieve /v1/retrieve retrieve_body.json
( while :; do curl -s -o /dev/null -X POST -d '{}' "$URL/v1/reload"; sleep 1; done ) &
RELOADER=$!
run rank_reload /v1/rank rank_body.json
run retrieve_reload /v1/retrieve retrieve_body.json
kill "$RELOADER"
curl -s "$URL/healthz"; echo
echo
echo "| endpoint | reloads | QPS | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|---|"
for n in rank retrieve rank_reload retrieve_reload; do
  f="$W/$n.txt"
  qps=$(awk '/Requests\/sec/ {print $2}' "$f")
  p50=$(awk '$1 == "50%" {print $2}' "$f")
  p99=$(awk '$1 == "99%" {print $2}' "$f")
  bad=$(awk -F'[ ,]+' '/non-2xx/ {print $3}' "$f")
  ep=/v1/${n%_reload}
  rl=no; [ "$n" != "${n%_reload}" ] && rl="every 1 s"
  echo "| $ep | $rl | $qps | $p50 | $p99 | $bad |"
done
