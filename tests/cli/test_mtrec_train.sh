#!/usr/bin/env bash
# End-to-end test of the mtrec-train program.
#
#   bash tests/cli/test_mtrec_train.sh PATH/TO/mtrec-train SCRATCH_DIR
#
# Optional third argument: the serve binary, smoke-tested on the saved checkpoint.
# Generates a small CSV with a learnable signal, trains with --split, --save
# and --curve, checks the JSON summary, predicts from the checkpoint alone,
# and checks that malformed inputs fail with a message naming the file and
# the line/column (or the flag) and leave no output file behind. Prints one
# line per check; exits non-zero if any check fails. Needs bash and python3.
# Runs single-threaded (--threads 1): results do not depend on the thread
# count, and a busy CI machine makes spinning OpenMP threads slow.
set -u

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 MTREC_TRAIN_BINARY SCRATCH_DIR [SERVE_BINARY]" >&2
  exit 2
fi
BIN=$1
DIR=$2
if [ ! -x "$BIN" ]; then
  echo "FAIL: '$BIN' is not an executable" >&2
  exit 1
fi
# Work in a fresh subdirectory, so that nothing else in SCRATCH_DIR is touched.
DIR="$DIR/mtrec_train_cli"
rm -rf "$DIR" && mkdir -p "$DIR" || exit 1
DIR=$(cd "$DIR" && pwd)

failures=0
checks=0
ok() { checks=$((checks + 1)); echo "ok   $1"; }
bad() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL $1"; }
# expect DESCRIPTION COMMAND...: passes when the command succeeds.
expect() {
  local desc=$1
  shift
  if "$@"; then ok "$desc"; else bad "$desc"; fi
}

# ---- data: 300 rows, click and rating depend on user, genres, age and item ----

python3 - "$DIR" <<'EOF' || { echo "FAIL: could not generate the data"; exit 1; }
import csv, os, random, sys
d = sys.argv[1]
rng = random.Random(7)
genres = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]
words = ["space", "love", "war", "ghost", "robot", "city", "night", "dream", "blue", "king"]
rows = []
for i in range(300):
    u = rng.randrange(25)
    it = rng.randrange(40)
    g = rng.sample(genres, rng.randrange(0, 3))
    title = " ".join(w.title() for w in rng.sample(words, 3)) + ', "Part" ' + str(it)  # a comma and quotes
    age = rng.randrange(18, 70)
    s = 1.2 * (u % 3 == 0) + 1.0 * ("Action" in g) - 0.8 * ("Drama" in g) + (age - 44) / 15 + 0.6 * (it % 2)
    click = 1 if s + rng.gauss(0, 0.4) > 0.6 else 0
    rating = "" if i % 10 == 3 else "%.1f" % (3 + s + rng.gauss(0, 0.3))  # some rows unlabelled
    rows.append(["u%d" % u, it, "|".join(g), title, age, click, rating, "m%d" % ((it + u) % 12), (it * 7) % 40])
header = ["user", "item", "genres", "title", "age", "click", "rating", "item2", "item3"]
with open(os.path.join(d, "data.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\r\n")  # CRLF, as spreadsheets write
    w.writerow(header)
    w.writerows(rows)
# Malformed copies: each breaks one thing at a known line.
def write(name, text):
    with open(os.path.join(d, name), "w", newline="") as f:
        f.write(text)
write("missing_col.csv", "user,item,genres,title,click,rating\nu1,3,Action,Hi,1,4.0\n")
lines = open(os.path.join(d, "data.csv"), newline="").read().split("\r\n")
bad_num = list(lines)
cells = next(csv.reader([bad_num[4]]))
cells[4] = "forty"  # age on line 5
bad_num[4] = ",".join('"%s"' % c.replace('"', '""') if ("," in c or '"' in c) else c for c in cells)
write("bad_number.csv", "\r\n".join(bad_num))
ragged = list(lines)
ragged[6] = "u1,3,Action"  # line 7: 3 fields instead of 9
write("ragged.csv", "\r\n".join(ragged))
write("empty.csv", "")
EOF

FEATURES=(--id user --id item:64 --bag 'genres:|' --text title:6 --dense age)
TASKS=(--task click:binary --task rating:regression)
COMMON=(--threads 1 --seed 3 --epochs 8 --batch 32 --lr 0.01)

# ---- --help ----

"$BIN" --help >"$DIR/help.txt" 2>&1
rc=$?
expect "--help exits 0" test "$rc" -eq 0
expect "--help documents every flag and an example" python3 - "$DIR/help.txt" <<'EOF'
import sys
t = open(sys.argv[1]).read()
flags = ["--id", "--bag", "--seq", "--text", "--dense", "--task", "--model", "--experts", "--dim", "--epochs",
         "--batch", "--lr", "--weight-decay", "--patience", "--seed", "--threads", "--weighting", "--train",
         "--valid", "--test", "--split", "--save", "--load", "--predict", "--out", "--curve", "--na-values",
         "COL:impute", "Example"]
missing = [f for f in flags if f not in t]
if missing:
    print("  missing from --help:", missing)
sys.exit(1 if missing else 0)
EOF

# ---- training with --split, --save, --curve ----

"$BIN" --train "$DIR/data.csv" "${FEATURES[@]}" "${TASKS[@]}" --model mmoe --experts 3 --split 0.8,0.1,0.1 \
  "${COMMON[@]}" --save "$DIR/model.safetensors" --curve "$DIR/curve.svg" \
  --predict "$DIR/data.csv" --out "$DIR/pred_trained.csv" --keep user --keep item >"$DIR/train.out" 2>"$DIR/train.err"
rc=$?
expect "training exits 0" test "$rc" -eq 0
[ "$rc" -eq 0 ] || sed 's/^/  stderr: /' "$DIR/train.err" | tail -5
expect "the last stdout line is JSON with model, epochs_run, train_seconds and per-task test metrics" \
  python3 - "$DIR/train.out" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().strip().splitlines()
j = json.loads(lines[-1])
ok = (j["model"] == "mmoe" and j["epochs_run"] == 8 and isinstance(j["train_seconds"], float)
      and j["split"] == "test" and j["rows"] == {"train": 240, "valid": 30, "test": 30}
      and set(j["test"]) == {"click", "rating"}
      and set(j["test"]["click"]) == {"auc", "logloss"} and set(j["test"]["rating"]) == {"rmse", "mae"})
# The signal is learnable: better than chance on held-out rows.
ok = ok and j["test"]["click"]["auc"] > 0.65 and j["test"]["rating"]["rmse"] < 1.5
if not ok:
    print("  got:", lines[-1])
sys.exit(0 if ok else 1)
EOF
expect "training shows progress on stderr" grep -q "epoch 8/8" "$DIR/train.err"
expect "the checkpoint is safetensors with the model config and the preprocessing" \
  python3 - "$DIR/model.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
m = h["__metadata__"]
p = json.loads(m["preprocessing"])
kinds = [(f["kind"], f["column"]) for f in p["features"]]
ok = (m["format"] == "mtrec.checkpoint" and "config" in m
      and kinds == [("id", "user"), ("id", "item"), ("bag", "genres"), ("text", "title"), ("dense", "age")]
      and p["features"][1]["buckets"] == 64 and "u0" in p["features"][0]["vocab"]
      and "mean" in p["features"][4] and [t["column"] for t in p["tasks"]] == ["click", "rating"]
      and "emb.user" in h)
sys.exit(0 if ok else 1)
EOF
expect "the learning curve is an SVG with axes, one polyline per task and a legend" \
  python3 - "$DIR/curve.svg" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
polys = root.findall(ns + "polyline")
texts = [t.text or "" for t in root.findall(ns + "text")]
ok = (root.tag == ns + "svg" and len(polys) == 2
      and all(len(p.get("points").split()) == 8 for p in polys)
      and "epoch" in texts and any("click (auc)" in t for t in texts) and any("rating (rmse)" in t for t in texts))
sys.exit(0 if ok else 1)
EOF

# The same seed gives the same model: bit-identical metrics.
"$BIN" --train "$DIR/data.csv" "${FEATURES[@]}" "${TASKS[@]}" --model mmoe --experts 3 --split 0.8,0.1,0.1 \
  "${COMMON[@]}" --quiet >"$DIR/train2.out" 2>/dev/null
expect "a second run with the same seed gives the same metrics" python3 - "$DIR/train.out" "$DIR/train2.out" <<'EOF'
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
sys.exit(0 if a["test"] == b["test"] else 1)
EOF

# --fused-tables: the tables' backward fused with their Adam update gives the
# same model to rounding.
"$BIN" --train "$DIR/data.csv" "${FEATURES[@]}" "${TASKS[@]}" --model mmoe --experts 3 --split 0.8,0.1,0.1 \
  "${COMMON[@]}" --quiet --fused-tables >"$DIR/train_fused.out" 2>"$DIR/train_fused.err"
expect "--fused-tables gives the unfused run's test metrics within 1e-4" python3 - "$DIR/train.out" "$DIR/train_fused.out" <<'EOF'
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
def flat(d, pre=""):
    for k, v in d.items():
        if isinstance(v, dict): yield from flat(v, pre + k + ".")
        elif isinstance(v, (int, float)): yield pre + k, float(v)
fa, fb = dict(flat(a["test"])), dict(flat(b["test"]))
ok = fa.keys() == fb.keys() and len(fa) > 0 and all(abs(fa[k] - fb[k]) <= 1e-4 * max(1.0, abs(fa[k])) for k in fa)
if not ok: print("  unfused:", fa, "\n  fused:", fb)
sys.exit(0 if ok else 1)
EOF

# ---- --load / --predict from the checkpoint alone ----

"$BIN" --load "$DIR/model.safetensors" --predict "$DIR/data.csv" --out "$DIR/pred.csv" --keep user --keep item \
  --threads 1 >"$DIR/pred.out" 2>"$DIR/pred.err"
rc=$?
expect "--load/--predict exits 0" test "$rc" -eq 0
[ "$rc" -eq 0 ] || sed 's/^/  stderr: /' "$DIR/pred.err" | tail -5
expect "--out has the header, one row per input row in input order, probabilities in [0, 1]" \
  python3 - "$DIR/data.csv" "$DIR/pred.csv" <<'EOF'
import csv, sys
src = list(csv.DictReader(open(sys.argv[1], newline="")))
out = list(csv.reader(open(sys.argv[2], newline="")))
ok = out[0] == ["user", "item", "click", "rating"] and len(out) == 1 + len(src) == 301
ok = ok and all(r[0] == s["user"] and r[1] == s["item"] for r, s in zip(out[1:], src))
ok = ok and all(0.0 <= float(r[2]) <= 1.0 for r in out[1:])
ok = ok and all(-20 < float(r[3]) < 30 for r in out[1:])  # ratings in their own units
if not ok:
    print("  header:", out[0], "rows:", len(out) - 1)
sys.exit(0 if ok else 1)
EOF
expect "predictions from the checkpoint equal those of the model that was trained" \
  cmp -s "$DIR/pred.csv" "$DIR/pred_trained.csv"
expect "--predict prints a JSON summary" python3 -c \
  'import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); sys.exit(0 if j["predicted"]==300 else 1)' \
  "$DIR/pred.out"

# ---- --task COL:bpr, COL:retrieval (own vocabulary and shared), --item-fields ----

"$BIN" --train "$DIR/data.csv" --id user --id item --bag 'genres:|' --dense age --task click:bpr \
  --task item2:retrieval --task item3:retrieval:item --item-fields item,genres --dim 4 --epochs 2 --batch 32 \
  --threads 1 --quiet --model shared_bottom --save "$DIR/rank.safetensors" --predict "$DIR/data.csv" \
  --out "$DIR/rank_pred.csv" > "$DIR/rank.out" 2> "$DIR/rank.err" || sed 's/^/  stderr: /' "$DIR/rank.err" | tail -5
expect "bpr and retrieval tasks train, report their metrics and save the item sides" \
  python3 - "$DIR/rank.out" "$DIR/rank.safetensors" "$DIR/rank_pred.csv" "$DIR/data.csv" <<'EOF'
import csv, json, struct, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
t = j["test"]
ok = set(t["click"]) == {"auc", "logloss"} and set(t["item2"]) == {"hit_rate@10", "ndcg@10"}
ok = ok and set(t["item3"]) == {"hit_rate@10", "ndcg@10"}
b = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
m = json.loads(b[8:8 + n])["__metadata__"]
cfg = json.loads(m["config"])
sides = {f["name"]: f["item_side"] for kind in ("ids", "bags", "dense") for f in cfg["features"][kind]}
ok = ok and sides == {"user": False, "item": True, "genres": True, "age": False}
p = json.loads(m["preprocessing"])
tasks = {x["column"]: x for x in p["tasks"]}
ok = ok and tasks["click"].get("loss") == "bpr" and tasks["item3"]["target_feature"] == "item"
ok = ok and "items" in tasks["item2"] and "items" not in tasks["item3"]
rows = list(csv.reader(open(sys.argv[3], newline="")))
ok = ok and rows[0] == ["click", "item2", "item2:score", "item3", "item3:score"] and len(rows) == 301
items = {r["item"] for r in csv.DictReader(open(sys.argv[4], newline=""))}
ok = ok and all(r[3] in items for r in rows[1:])  # the shared table's best item is a raw item value
if not ok:
    print("  metrics:", t, "\n  sides:", sides, "\n  header:", rows[0])
sys.exit(0 if ok else 1)
EOF

# ---- malformed inputs: non-zero exit, a precise message, no output files ----

# no_outputs NAME: no output file out_NAME.* and no temporary file anywhere in $DIR.
no_outputs() {
  ! ls "$DIR/out_$1".* >/dev/null 2>&1 && ! ls "$DIR"/*.tmp.* >/dev/null 2>&1
}
# expect_error NAME "FRAGMENT|FRAGMENT..." ARGS...: mtrec-train ARGS (plus
# --save/--curve into out_NAME.*) must fail with every fragment in stderr.
expect_error() {
  local name=$1 fragments=$2
  shift 2
  local log="$DIR/log_$name"
  "$BIN" "$@" --save "$DIR/out_$name.safetensors" --curve "$DIR/out_$name.svg" >"$log.stdout" 2>"$log.stderr"
  local rc=$? missing="" f
  IFS='|' read -r -a parts <<<"$fragments"
  for f in "${parts[@]}"; do
    grep -qF -- "$f" "$log.stderr" || missing="$missing '$f'"
  done
  if [ "$rc" -ne 0 ] && [ -z "$missing" ] && no_outputs "$name"; then
    ok "$name: exit $rc, message names$(printf " '%s'" "${parts[@]}")"
  else
    bad "$name: exit $rc, missing from the message:${missing:- (none)}"
    sed 's/^/  stderr: /' "$log.stderr" | head -3
    ls "$DIR/out_$name".* "$DIR"/*.tmp.* 2>/dev/null | sed 's/^/  left behind: /'
  fi
}
TRAIN_ARGS=("${FEATURES[@]}" "${TASKS[@]}" --split 0.8,0.1,0.1 --threads 1 --epochs 1 --quiet)
expect_error missing_column "missing_col.csv|line 1|'age'|--dense age" --train "$DIR/missing_col.csv" "${TRAIN_ARGS[@]}"
expect_error bad_number "bad_number.csv|line 5|column 'age'|'forty'" --train "$DIR/bad_number.csv" "${TRAIN_ARGS[@]}"
expect_error ragged_row "ragged.csv|line 7|expected 9 fields|got 3|column #4" --train "$DIR/ragged.csv" "${TRAIN_ARGS[@]}"
expect_error empty_file "empty.csv|line 1|column 1|empty" --train "$DIR/empty.csv" "${TRAIN_ARGS[@]}"
expect_error unknown_flag "--bogus" --train "$DIR/data.csv" "${TRAIN_ARGS[@]}" --bogus 3
# A bad validation or test file fails before training, with its own name.
expect_error bad_test_file "ragged.csv|line 7" --train "$DIR/data.csv" "${FEATURES[@]}" "${TASKS[@]}" \
  --test "$DIR/ragged.csv" --threads 1 --epochs 1 --quiet

# A failed prediction leaves an existing --out untouched and no temporary file.
echo "previous contents" >"$DIR/keep_out.csv"
for input in bad_number ragged empty; do
  "$BIN" --load "$DIR/model.safetensors" --predict "$DIR/$input.csv" --out "$DIR/keep_out.csv" --threads 1 \
    >/dev/null 2>"$DIR/predict_err.txt"
  rc=$?
  if [ "$rc" -ne 0 ] && grep -qF "$input.csv' line" "$DIR/predict_err.txt" &&
     [ "$(cat "$DIR/keep_out.csv")" = "previous contents" ] && ! ls "$DIR"/*.tmp.* >/dev/null 2>&1; then
    ok "--predict $input.csv: exit $rc, names the file and line, --out untouched"
  else
    bad "--predict $input.csv: exit $rc"
    sed 's/^/  stderr: /' "$DIR/predict_err.txt" | head -3
  fi
done
"$BIN" --load "$DIR/model.safetensors" --predict "$DIR/data.csv" --threads 1 >/dev/null 2>"$DIR/predict_err.txt"
expect "--predict without --out is a command-line error (exit 2)" test $? -eq 2

# The serving example answers top-K requests from the checkpoint mtrec-train wrote.
SERVE="${3:-}"
if [ -n "$SERVE" ]; then
  "$SERVE" --load "$DIR/model.safetensors" --item-fields item,genres,title --threads 2 --requests 200 \
    --candidates 50 --k 5 >"$DIR/serve.out" 2>"$DIR/serve.err"
  rc=$?
  expect "serve answers 200 top-5 requests from the checkpoint and reports p50/p99/throughput as JSON" \
    python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); sys.exit(0 if sys.argv[2]=="0" and j["requests"]==200 and 0<j["p50_ms"]<=j["p99_ms"] and j["requests_per_s"]>0 else 1)' "$DIR/serve.out" "$rc"
  "$SERVE" --load "$DIR/model.safetensors" --item-fields nope >/dev/null 2>"$DIR/serve.err"
  rc=$?
  expect "serve rejects an unknown item field, naming it" test "$rc" -ne 0 -a -n "$(grep -F "'nope'" "$DIR/serve.err")"
  # A checkpoint whose config seed does not fit 64 bits: an error and exit 1 (it used to abort, exit 134).
  python3 - "$DIR/model.safetensors" "$DIR/seed_1e25.safetensors" <<'EOF2'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
cfg = json.loads(h["__metadata__"]["config"])
cfg["seed"] = "1" + "0" * 25
h["__metadata__"]["config"] = json.dumps(cfg)
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])
EOF2
  "$SERVE" --load "$DIR/seed_1e25.safetensors" --item-fields item >/dev/null 2>"$DIR/serve.err"
  rc=$?
  expect "serve refuses a checkpoint with a 26-digit seed with exit 1, naming the file and the key" \
    test "$rc" -eq 1 -a -n "$(grep -F "key 'seed'" "$DIR/serve.err" | grep -F seed_1e25.safetensors)"
fi

echo "$((checks - failures))/$checks checks passed"
[ "$failures" -eq 0 ]
