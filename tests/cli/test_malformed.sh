#!/usr/bin/env bash
# Malformed and unusual inputs for the mtrec-train program, as one table.
#
#   bash tests/cli/test_malformed.sh PATH/TO/mtrec-train SCRATCH_DIR
#
# Each row of the table below is one case: a name, the exit status expected
# (0 success, 1 bad data, 2 bad command line), the words its message must
# contain (separated by '|'; for exit 0 nothing is required) and the
# arguments. @OUT@ in the arguments becomes "$DIR/out_NAME", the prefix of
# every output file of the case. Every case checks that no temporary file
# (*.tmp.*) is left in the scratch directory and, when it fails, that no
# output file out_NAME.* was written (when it succeeds, that its outputs
# exist). Tiny data, one epoch, one thread: the whole table runs in seconds.
# Needs bash and python3.
set -u

if [ $# -ne 2 ]; then
  echo "usage: $0 MTREC_TRAIN_BINARY SCRATCH_DIR" >&2
  exit 2
fi
BIN=$1
DIR=$2
if [ ! -x "$BIN" ]; then
  echo "FAIL: '$BIN' is not an executable" >&2
  exit 1
fi
DIR="$DIR/mtrec_malformed_cli"
rm -rf "$DIR" && mkdir -p "$DIR" || exit 1
DIR=$(cd "$DIR" && pwd)

# ---- data ---------------------------------------------------------------------------------

python3 - "$DIR" <<'EOF' || { echo "FAIL: could not generate the data"; exit 1; }
import json, os, random, struct, sys
d = sys.argv[1]
rng = random.Random(5)
header = ["user", "item", "age", "click", "rating"]
rows = []
for i in range(40):
    u, it, age = rng.randrange(6), rng.randrange(10), rng.randrange(18, 70)
    click = 1 if (u % 2 == 0) != (age > 45) else 0
    rows.append(["u%d" % u, str(it), str(age), str(click), "%.1f" % (2 + (age - 18) / 20)])

def text(rs, h=header, eol="\n"):
    return eol.join(",".join(r) for r in [h] + rs) + eol

def write(name, content, mode="w"):
    with open(os.path.join(d, name), mode, **({} if "b" in mode else {"newline": ""})) as f:
        f.write(content)

def with_cell(line, col, value, base=None):
    rs = [list(r) for r in (base or rows)]
    rs[line - 2][header.index(col)] = value  # line 1 is the header
    return rs

write("good.csv", text(rows))
write("empty.csv", "")
write("header_only.csv", text([]))
write("bom.csv", "\ufeff" + text(rows))  # UTF-8 BOM, as Excel writes "CSV UTF-8"
write("duplicate.csv", text([r + [r[2]] for r in rows], header + ["age"]))
write("no_rating.csv", text([r[:4] for r in rows], header[:4]))
write("dense_word.csv", text(with_cell(3, "age", "forty")))
write("dense_1e400.csv", text(with_cell(4, "age", "1e400")))
write("dense_1e200.csv", text(with_cell(5, "age", "1e200")))
write("label_1e200.csv", text(with_cell(6, "rating", "-1e200")))
write("dense_na.csv", text(with_cell(4, "age", "NA")))
write("dense_custom_na.csv", text(with_cell(7, "age", "-999")))
# R's write.csv / pandas: NA, NaN, N/A, null and empty cells all mean missing.
na = [list(r) for r in rows]
for i, m in enumerate(["NA", "NaN", "N/A", "null", "", "NA"]):
    na[2 + 5 * i][2] = m  # age
    na[3 + 5 * i][4] = m  # rating (task): masked
    na[4 + 5 * i][0] = m  # user (id): the OOV row
    na[5 + 5 * i][3] = m  # click (task): masked
write("missing.csv", text(na))
# A column name that is not UTF-8 (Latin-1 "café").
write("latin1_name.csv", text(rows, ["user", "item", "caf\xe9", "click", "rating"]).encode("latin-1"), "wb")
# A wide header and many blank lines: once made the reader reserve
# columns x line breaks cells (about 120 GB) before reading anything.
write("wide_blank.csv", ",".join("c%d" % i for i in range(100000)) + "\n" * 100000)
# Predict files.
write("predict_no_age.csv", text([r[:2] for r in rows], header[:2]))
write("predict_na.csv", text(with_cell(3, "age", "NA", [r[:3] for r in rows]), header[:3]))
# Foreign checkpoints.
write("zero.safetensors", b"", "wb")
write("random.safetensors", bytes(rng.randrange(256) for _ in range(4096)), "wb")
hdr = json.dumps({"__metadata__": {"format": "something.else"},
                  "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
write("foreign.safetensors", struct.pack("<Q", len(hdr)) + hdr + struct.pack("<2f", 1, 2), "wb")
EOF

# FEAT: the columns and a tiny model; RUN: one quick epoch (rows that test one of these flags spell out the rest).
FEAT=(--id user --id item:16 --dense age --task click:binary --task rating:regression
      --tower 4 --expert-layers 8 --experts 2 --quiet --seed 1)
RUN=(--dim 4 --batch 16 --epochs 1 --threads 1)
TRAIN=("${FEAT[@]}" "${RUN[@]}")
TRAIN_IMPUTE=(--id user --id item:16 --dense age:impute --task click:binary --task rating:regression
              --dim 4 --tower 4 --expert-layers 8 --experts 2 --batch 16 --epochs 1 --threads 1 --quiet --seed 1)
SAVE=(--save @OUT@.safetensors)

# A good checkpoint for the --load cases (with an imputed dense column), and a truncated copy.
setup_failed=0
"$BIN" --train "$DIR/good.csv" "${TRAIN_IMPUTE[@]}" --save "$DIR/model.safetensors" >/dev/null 2>"$DIR/setup.err" ||
  { setup_failed=1; echo "FAIL could not train the reference model (the --load rows fail too)"; sed 's/^/  stderr: /' "$DIR/setup.err" | head -3; }
python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); open(sys.argv[2],"wb").write(b[:len(b)//2])' \
  "$DIR/model.safetensors" "$DIR/truncated.safetensors"
LOAD=(--load "$DIR/model.safetensors" --threads 1 --out @OUT@.csv)
# Hostile copies of it: the config's seed beyond 64 bits, and a 1e9-row table the file does not hold.
python3 - "$DIR" <<'EOF2'
import json, struct, sys, os
d = sys.argv[1]
b = open(os.path.join(d, "model.safetensors"), "rb").read()
n = struct.unpack("<Q", b[:8])[0]
head = json.loads(b[8:8 + n])
def variant(name, edit):
    h = json.loads(json.dumps(head))
    cfg = json.loads(h["__metadata__"]["config"])
    edit(cfg)
    h["__metadata__"]["config"] = json.dumps(cfg)
    text = json.dumps(h).encode()
    text += b" " * (-len(text) % 8)
    open(os.path.join(d, name), "wb").write(struct.pack("<Q", len(text)) + text + b[8 + n:])
variant("seed_1e25.safetensors", lambda c: c.__setitem__("seed", "1" + "0" * 25))
variant("vocab_1e9.safetensors", lambda c: c["features"]["ids"][0].__setitem__("vocab", 10**9))
EOF2

# ---- the harness --------------------------------------------------------------------------

failures=$setup_failed
checks=$setup_failed
row() {
  local name=$1 want=$2 fragments=$3
  shift 3
  local args=() a
  for a in "$@"; do args+=("${a//@OUT@/$DIR/out_$name}"); done
  local log="$DIR/log_$name"
  "$BIN" "${args[@]}" >"$log.stdout" 2>"$log.stderr"
  local rc=$? problems="" f
  checks=$((checks + 1))
  [ "$rc" -eq "$want" ] || problems="$problems exit $rc (expected $want);"
  if [ -n "$fragments" ]; then
    IFS='|' read -r -a parts <<<"$fragments"
    for f in "${parts[@]}"; do
      grep -qF -- "$f" "$log.stderr" || problems="$problems message lacks '$f';"
    done
  fi
  if ls "$DIR"/*.tmp.* >/dev/null 2>&1; then problems="$problems temporary file left: $(ls "$DIR"/*.tmp.*);"; fi
  if [ "$want" -ne 0 ]; then
    if ls "$DIR/out_$name".* >/dev/null 2>&1; then problems="$problems partial output left: $(ls "$DIR/out_$name".*);"; fi
  elif [[ " ${args[*]} " == *"$DIR/out_$name"* ]] && ! ls "$DIR/out_$name".* >/dev/null 2>&1; then
    problems="$problems no output written;"
  fi
  if [ -z "$problems" ]; then
    echo "ok   $name (exit $rc)"
  else
    failures=$((failures + 1))
    echo "FAIL $name:$problems"
    sed 's/^/  stderr: /' "$log.stderr" | head -4
  fi
}

# ---- the table ----------------------------------------------------------------------------
# name                 exit  message must contain                                    arguments
row empty_file           1 "empty.csv|line 1|empty"                                   --train "$DIR/empty.csv" "${TRAIN[@]}" "${SAVE[@]}"
row header_only          1 "header_only.csv|no training rows"                         --train "$DIR/header_only.csv" "${TRAIN[@]}" "${SAVE[@]}"
row bom_is_stripped      0 ""                                                         --train "$DIR/bom.csv" "${TRAIN[@]}" "${SAVE[@]}"
row duplicate_column     1 "duplicate.csv|line 1|'age' appears twice|#3|#6"           --train "$DIR/duplicate.csv" "${TRAIN[@]}" "${SAVE[@]}"
row missing_task_column  1 "no_rating.csv|line 1|no column 'rating'|--task rating:regression" --train "$DIR/no_rating.csv" "${TRAIN[@]}" "${SAVE[@]}"
row dense_not_a_number   1 "dense_word.csv|line 3|column 'age'|'forty'"               --train "$DIR/dense_word.csv" "${TRAIN[@]}" "${SAVE[@]}"
row dense_1e400          1 "dense_1e400.csv|line 4|column 'age'|'1e400'"              --train "$DIR/dense_1e400.csv" "${TRAIN[@]}" "${SAVE[@]}"
row dense_1e200          1 "dense_1e200.csv|line 5|column 'age'|float range|'1e200'"  --train "$DIR/dense_1e200.csv" "${TRAIN[@]}" "${SAVE[@]}"
row label_1e200          1 "label_1e200.csv|line 6|column 'rating'|float range|'-1e200'" --train "$DIR/label_1e200.csv" "${TRAIN[@]}" "${SAVE[@]}"
row dense_na_refused     1 "dense_na.csv|line 4|column 'age'|missing value 'NA'|--dense age:impute" --train "$DIR/dense_na.csv" "${TRAIN[@]}" "${SAVE[@]}"
row missing_values       0 ""                                                         --train "$DIR/missing.csv" "${TRAIN_IMPUTE[@]}" "${SAVE[@]}"
row missing_dense_row    1 "missing.csv|line 4|column 'age'|missing value 'NA'"       --train "$DIR/missing.csv" "${TRAIN[@]}" "${SAVE[@]}"
row na_values_custom     1 "dense_custom_na.csv|line 7|column 'age'|missing value '-999'" --train "$DIR/dense_custom_na.csv" "${TRAIN[@]}" --na-values 'NA,-999' "${SAVE[@]}"
row na_values_replaced   1 "dense_na.csv|line 4|column 'age'|expected a finite number|'NA'" --train "$DIR/dense_na.csv" "${TRAIN[@]}" --na-values '' "${SAVE[@]}"
row latin1_column_name   2 "not valid UTF-8|caf\\xE9|--dense caf\\xE9"                --train "$DIR/latin1_name.csv" --id user --dense $'caf\xe9' --task click:binary --epochs 1 --threads 1 --quiet "${SAVE[@]}"
row wide_blank_lines     1 "wide_blank.csv|no training rows"                          --train "$DIR/wide_blank.csv" --id c0 --task c1:binary --epochs 1 --threads 1 --quiet "${SAVE[@]}"
row epochs_2pow32_plus1  2 "--epochs|[1, 2147483647]|'4294967297'"                    --train "$DIR/good.csv" "${FEAT[@]}" --dim 4 --batch 16 --threads 1 --epochs=4294967297 "${SAVE[@]}"
row patience_overflow    2 "--patience|[0, 2147483647]|'4294967296'"                  --train "$DIR/good.csv" "${TRAIN[@]}" --patience 4294967296 "${SAVE[@]}"
row threads_overflow     2 "--threads|[1, 1024]|'4294967297'"                         --train "$DIR/good.csv" "${FEAT[@]}" --dim 4 --batch 16 --epochs 1 --threads=4294967297 "${SAVE[@]}"
row batch_not_int64      2 "--batch|'99999999999999999999'"                           --train "$DIR/good.csv" "${FEAT[@]}" --dim 4 --epochs 1 --threads 1 --batch=99999999999999999999 "${SAVE[@]}"
row dim_beyond_limit     2 "--dim|[1, 65536]|'100000'"                                --train "$DIR/good.csv" "${FEAT[@]}" --batch 16 --epochs 1 --threads 1 --dim=100000 "${SAVE[@]}"
row buckets_beyond_limit 2 "--id|item:99999999999999|<= 1099511627776"              --train "$DIR/good.csv" --id user --id item:99999999999999 --task click:binary --epochs 1 --threads 1 --quiet "${SAVE[@]}"
row buckets_too_much_mem 1 "--id item:1000000000000|bytes|memory"                     --train "$DIR/good.csv" --id user --id item:1000000000000 --task click:binary --epochs 1 --threads 1 --quiet "${SAVE[@]}"
row dim_too_much_memory  1 "--dim 65536|bytes|memory"                                 --train "$DIR/good.csv" --id user --task click:binary --dim 65536 --bottom 1048576,1048576 --epochs 1 --threads 1 --quiet "${SAVE[@]}"
row load_zero_bytes      1 "zero.safetensors"                                         --load "$DIR/zero.safetensors" --predict "$DIR/good.csv" --threads 1 --out @OUT@.csv
row load_truncated       1 "truncated.safetensors"                                    --load "$DIR/truncated.safetensors" --predict "$DIR/good.csv" --threads 1 --out @OUT@.csv
row load_random_bytes    1 "random.safetensors"                                       --load "$DIR/random.safetensors" --predict "$DIR/good.csv" --threads 1 --out @OUT@.csv
row load_foreign_st      1 "foreign.safetensors|mtrec.checkpoint"                     --load "$DIR/foreign.safetensors" --predict "$DIR/good.csv" --threads 1 --out @OUT@.csv
row predict_no_feature   1 "predict_no_age.csv|line 1|no column 'age'|--dense age:impute" "${LOAD[@]}" --predict "$DIR/predict_no_age.csv"
row predict_imputes_na   0 ""                                                         "${LOAD[@]}" --predict "$DIR/predict_na.csv"
row load_seed_1e25       1 "seed_1e25.safetensors|key 'seed'|10000000000000000000000000" --load "$DIR/seed_1e25.safetensors" --predict "$DIR/good.csv" --threads 1 --out @OUT@.csv
row load_vocab_1e9       1 "vocab_1e9.safetensors|does not match the file's tensors|1000000000" --load "$DIR/vocab_1e9.safetensors" --predict "$DIR/good.csv" --threads 1 --out @OUT@.csv
row diverged_lr_1e10     1 "non-finite|epoch"                                         --train "$DIR/good.csv" "${FEAT[@]}" --dim 4 --batch 16 --threads 1 --model mmoe --lr 1e10 --epochs 5 "${SAVE[@]}"
row load_with_na_values  2 "--na-values|cannot be used with --load"                   "${LOAD[@]}" --predict "$DIR/good.csv" --na-values NA

# ---- what the successful rows wrote -------------------------------------------------------

checks=$((checks + 1))
if python3 - "$DIR" <<'EOF'; then echo "ok   the checkpoint stores na_values and the imputed column's mean; predictions are finite"; else failures=$((failures + 1)); echo "FAIL the checkpoint's preprocessing or the imputed predictions"; fi
import csv, json, math, os, struct, sys
d = sys.argv[1]
b = open(os.path.join(d, "out_missing_values.safetensors"), "rb").read()
n = struct.unpack("<Q", b[:8])[0]
p = json.loads(json.loads(b[8:8 + n])["__metadata__"]["preprocessing"])
age = [f for f in p["features"] if f["column"] == "age"][0]
ok = age["impute"] is True and math.isfinite(age["mean"]) and "NA" in p["na_values"] and "null" in p["na_values"]
rows = list(csv.reader(open(os.path.join(d, "out_predict_imputes_na.csv"), newline="")))
ok = ok and rows[0] == ["click", "rating"] and len(rows) == 41
ok = ok and all(math.isfinite(float(x)) for r in rows[1:] for x in r)
sys.exit(0 if ok else 1)
EOF

echo "$((checks - failures))/$checks checks passed"
[ "$failures" -eq 0 ]
