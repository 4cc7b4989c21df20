#!/usr/bin/env bash
# deck_cli_errors.sh FULCRUM_TRAIN WORKDIR
#
# End-to-end check of deck validation in the trainer: for each bad deck,
# `fulcrum-train DECK` must exit with status 2, print file:line and the key on
# stderr, and not create the deck's output.dir (validation happens before
# anything runs).
set -u
bin=${1:?usage: deck_cli_errors.sh FULCRUM_TRAIN WORKDIR}
work=${2:?usage: deck_cli_errors.sh FULCRUM_TRAIN WORKDIR}
rm -rf "$work"
mkdir -p "$work"
# Absolute paths: each case runs in its own directory.
bin=$(readlink -f "$bin")
work=$(readlink -f "$work")
failures=0

# A valid dense deck; line N of a case's deck is fixed by the text below.
# $1 = extra [model] lines, $2 = extra [train] lines, $3/$4 = n_heads/n_kv_heads.
write_deck() {
  cat <<DECK
[data]
train = "train.tok"
valid = "valid.tok"
[output]
dir = "out"
[model]
d_model = 64
n_heads = ${3:-4}
n_kv_heads = ${4:-2}
seq_len = 32
$1
[train]
tokens = 1000
micro_batch_size = 2
$2
DECK
}

# check NAME EXPECTED_LOCATION EXPECTED_KEY MODEL_LINES TRAIN_LINES N_HEADS N_KV [--set ...]
check() {
  local name=$1 loc=$2 key=$3 model=$4 train=$5 heads=$6 kv=$7
  shift 7
  local dir="$work/$name"
  mkdir -p "$dir"
  write_deck "$model" "$train" "$heads" "$kv" > "$dir/deck.toml"
  (cd "$dir" && timeout 120 "$bin" deck.toml "$@" > stdout.txt 2> stderr.txt)
  local rc=$?
  local err
  err=$(cat "$dir/stderr.txt")
  local ok=1
  if [[ $rc -ne 2 ]]; then echo "FAIL $name: exit code $rc, expected 2"; ok=0; fi
  if [[ "$err" != *"$loc"* ]]; then echo "FAIL $name: stderr lacks '$loc'"; ok=0; fi
  if [[ "$err" != *"$key"* ]]; then echo "FAIL $name: stderr lacks '$key'"; ok=0; fi
  if [[ -e "$dir/out" ]]; then echo "FAIL $name: output dir was created"; ok=0; fi
  if [[ $ok -eq 1 ]]; then
    echo "ok   $name: $err"
  else
    echo "     stderr: $err"
    failures=$((failures + 1))
  fi
}

check unknown_key   "deck.toml:11:" "did you mean 'n_heads'" "n_head = 4" ""                        4 2
check wrong_type    "deck.toml:15:" "[train] lr:"           ""           'lr = "fast"'              4 2
check out_of_range  "deck.toml:15:" "[train] lr:"           ""           "lr = 2.0"                 4 2
check heads         "deck.toml:8:"  "[model] n_heads:"      ""           ""                         3 1
check kv_heads      "deck.toml:9:"  "[model] n_kv_heads:"   ""           ""                         4 3
check bad_enum      "deck.toml:15:" "[train] lr_schedule:"  ""           'lr_schedule = "linear"'   4 2
check bad_override  "--set:"        "[model] n_heads:"      ""           ""                         4 2 --set model.n_heads=3

# --describe-keys prints the schema's key tables: every section, and the
# allowed values of a registry-backed key.
keys=$("$bin" --describe-keys markdown 2>&1)
rc=$?
if [[ $rc -ne 0 || "$keys" != *"### [parallel]"* || "$keys" != *'`mpi_alltoall`'* || "$keys" != *"### Cross-key rules"* ]]; then
  echo "FAIL describe_keys: exit code $rc; output: ${keys:0:300}"
  failures=$((failures + 1))
else
  echo "ok   describe_keys: $(printf '%s\n' "$keys" | grep -c '^| `') key rows"
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all deck CLI error cases passed"
