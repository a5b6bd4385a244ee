#!/usr/bin/env bash
# End-to-end test of mtrec-serve over loopback:
#   bash tests/cli/test_mtrec_serve.sh PATH/TO/mtrec-train PATH/TO/mtrec-serve SCRATCH_DIR
# Trains two small models with mtrec-train (binary, regression and a
# retrieval task sharing the movie table; movie and genres item-side),
# starts the server on a free port, then checks (tests/cli/serve_client.py):
#   - /v1/rank scores equal mtrec-train --load --predict for the same rows,
#     best first by the first task;
#   - /v1/retrieve's best item and score equal --predict's exact top-1, and
#     exclude removes items;
#   - 20 malformed requests, each a 400 whose error names the field;
#   - reloads while a client thread sends requests: no failed request, the
#     version changes; a checkpoint that fails to load leaves the live model;
#   - /healthz and /metrics;
# and finally that SIGTERM drains and exits 0.
set -euo pipefail
TRAIN="$1"
SERVE="$2"
DIR="$3/mtrec_serve_cli"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rm -rf "$DIR"
mkdir -p "$DIR"

python3 - "$DIR" <<'EOF'
import random, sys
d = sys.argv[1]
rng = random.Random(7)
genres = ["Action", "Comedy", "Drama", "Horror", "SciFi"]
movie_genres = {m: "|".join(sorted(rng.sample(genres, rng.randint(1, 3)))) for m in range(1, 41)}
rows = []
for i in range(600):
    u = rng.randint(1, 30)
    m = rng.randint(1, 40)
    hist = "|".join(str(rng.randint(1, 40)) for _ in range(rng.randint(0, 5)))
    age = 18 + (u * 7) % 50
    like = 1 if (u + m) % 3 == 0 or rng.random() < 0.2 else 0
    rating = 1 + ((u * m) % 5)
    nxt = (m + u) % 40 + 1
    rows.append(f"{u},{m},{movie_genres[m]},{hist},{age},{like},{rating},{nxt}")
with open(f"{d}/train.csv", "w") as f:
    f.write("user,movie,genres,history,age,like,rating,next\n" + "\n".join(rows) + "\n")
# The rank request's rows as a CSV file for --predict: user 5 (history 3|9,
# age 53) against 6 candidates, one of them a movie never seen (999).
cands = [(3, movie_genres[3]), (17, movie_genres[17]), (999, "Drama"), (22, movie_genres[22]),
         (8, movie_genres[8]), (40, movie_genres[40])]
with open(f"{d}/rank.csv", "w") as f:
    f.write("user,movie,genres,history,age\n")
    for m, g in cands:
        f.write(f"5,{m},{g},3|9,53\n")
EOF

FLAGS=(--id user --id movie --bag 'genres:|' --seq 'history:|:5' --dense age
       --task like:binary --task rating:regression --task next:retrieval:movie
       --item-fields movie,genres --model mmoe --dim 8 --epochs 3 --batch 64 --threads 1 --quiet)
"$TRAIN" --train "$DIR/train.csv" "${FLAGS[@]}" --seed 1 --save "$DIR/m1.safetensors" > "$DIR/train1.json"
"$TRAIN" --train "$DIR/train.csv" "${FLAGS[@]}" --seed 2 --save "$DIR/m2.safetensors" > "$DIR/train2.json"
"$TRAIN" --load "$DIR/m1.safetensors" --predict "$DIR/rank.csv" --out "$DIR/pred.csv" --threads 1 > /dev/null
printf 'not a checkpoint' > "$DIR/broken.safetensors"

"$SERVE" --load "$DIR/m1.safetensors" --port 0 --port-file "$DIR/port" --threads 2 --max-candidates 50 --max-body 200000 \
  2> "$DIR/serve.err" &
PID=$!
cleanup() { kill -9 "$PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 200); do
  [ -s "$DIR/port" ] && break
  kill -0 "$PID" 2>/dev/null || { echo "FAIL mtrec-serve exited early:"; cat "$DIR/serve.err"; exit 1; }
  sleep 0.05
done
[ -s "$DIR/port" ] || { echo "FAIL mtrec-serve wrote no port file"; cat "$DIR/serve.err"; exit 1; }
PORT="$(cat "$DIR/port")"

status=0
python3 "$HERE/serve_client.py" "$PORT" "$DIR" || status=1

kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
trap - EXIT
if [ "$rc" -ne 0 ]; then
  echo "FAIL SIGTERM: mtrec-serve exited $rc"
  cat "$DIR/serve.err"
  status=1
else
  echo "ok   SIGTERM drains and exits 0"
fi
grep -q "draining" "$DIR/serve.err" || { echo "FAIL no drain message"; status=1; }
exit "$status"
