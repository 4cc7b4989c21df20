#!/usr/bin/env bash
# End to end, as a user would: the shipped tiny study deck
# (input_decks/studies/tiny.toml: hyper-parameters -> allocation -> A/G/S
# ablations -> EL, two budgets per stage, 34 tiny runs) through
#   fulcrum-sweep study run
# to a laws file with Law 2 and the EL joint law fitted and a wind-tunnel
# report; a second `study run` trains and fits nothing; then the same study in
# a second directory, killed (SIGKILL to the command and its trainers) in the
# middle of stage 2 and resumed with the same command, must give the same laws
# and the same run results. Needs data/default.
# usage: study_e2e.sh SOURCE_DIR WORK_DIR FULCRUM_SWEEP FULCRUM_TRAIN FULCRUM_FIT
set -u
src=$1 work=$2 sweep=$3 train=$4 fit=$5
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$src/data/default/train.tok" ] || fail "no $src/data/default/train.tok: run scripts/prepare-default-data.sh first"
rm -rf "$work" && mkdir -p "$work" || fail "cannot create $work"
cd "$work" || exit 1
export FULCRUM_TRAIN=$train FULCRUM_FIT=$fit OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
deck() {  # the shipped deck with absolute data paths and directory $1
  sed -e "s#\"data/default/#\"$src/data/default/#" -e "s#^dir = \"runs/studies/tiny\"#dir = \"$work/$1\"#" \
    "$src/input_decks/studies/tiny.toml" > "$1.toml"
  grep -q "^dir = \"$work/$1\"" "$1.toml" || fail "could not set the study dir in $1.toml"
}

# ---- 1. the whole study, uninterrupted
deck ref
t0=$(date +%s)
"$sweep" study run ref.toml -q > ref.log 2>&1
rc=$?
cat ref.log
[ $rc = 0 ] || fail "study run exited $rc"
echo "study run: $(( $(date +%s) - t0 )) s"
grep -q '^FULCRUM_STUDY study=tiny status=completed stages=3 ' ref.log || fail "no completion line"
for st in hparams allocation ablations; do
  grep -q "\"$st\": gate passed" ref.log || fail "stage $st did not pass its gate"
done
laws=ref/laws.toml
[ -f $laws ] || fail "no final laws file"
grep -q '^\[law2\.dense\]' $laws || fail "no dense Law 2 in the final laws"
grep -q '^\[el\.joint\]' $laws || fail "no EL joint law in the final laws"
grep -q '^\[law1\.' $laws || fail "no Law 1 in the final laws"
/usr/bin/python3 - "$laws" <<'PY' || fail "final laws: Law 2 and EL not fitted per [[diagnostics]]"
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
v = d["diagnostics"]
assert any(x["law"] == "law2" and x["fitted"] for x in v), "law2"
assert any(x["law"] == "el" and x["fitted"] for x in v), "el"
assert d["el"]["joint"]["n_train"] >= 6
print("final laws: M_opt(dense) = %.4g C^%.4f; EL joint a = %.4g on %d points" % (
    d["law2"]["dense"]["M_k"], d["law2"]["dense"]["M_a"], d["el"]["joint"]["a"], d["el"]["joint"]["n_train"]))
PY
wt=ref/windtunnel/windtunnel.txt
[ -f $wt ] || fail "no wind-tunnel report"
grep -q '^Wind tunnel: laws refitted without the largest budget C=2.5e+09' $wt || fail "wind tunnel did not hold out C=3e9"
grep -q '^  Law 3 loss dense ' $wt || fail "wind tunnel has no dense Law 3 prediction"
# every stage and every run in the status
"$sweep" study status ref.toml > status.txt || fail "study status"
cat status.txt
[ "$(grep -c 'fitted, gate passed' status.txt)" = 3 ] || fail "status: not every stage passed"
[ "$(grep -cE '^    [^ ]+ +completed ' status.txt)" = 34 ] || fail "status: expected 34 completed runs in the tables"
grep -q '^final laws .*: complete' status.txt || fail "status: final laws"
# a second run does nothing
"$sweep" study run ref.toml > again.log 2>&1 || { cat again.log; fail "second study run"; }
grep -q '^start ' again.log && fail "second study run started runs"
[ "$(grep -c 'fit is up to date' again.log)" = 3 ] || { cat again.log; fail "second study run refitted"; }

# ---- 2. killed in the middle of stage 2, resumed
deck int
setsid "$sweep" study run int.toml > int1.log 2>&1 &
pid=$!
for i in $(seq 1 600); do  # until stage 2 has a finished run and others running
  if [ -n "$(ls int/2-allocation/*/runs/*/run.h5 2>/dev/null)" ] && grep -q '^completed .*' int1.log &&
     [ "$(grep -c '^completed ' int1.log)" -ge 13 ]; then break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -0 $pid 2>/dev/null || { cat int1.log; fail "the study ended before it could be killed"; }
kill -KILL -- -$pid  # the command and every trainer it started
wait $pid 2>/dev/null
sleep 0.5
cat int1.log
"$sweep" study status int.toml --brief > int-status.txt
cat int-status.txt
grep -q '^stage 2 "allocation" (requires law2): running' int-status.txt || fail "killed study: stage 2 not shown as running"
grep -q '^stage 3 "ablations" (requires law3 el): not planned yet' int-status.txt || fail "killed study: stage 3 planned"
"$sweep" study run int.toml > int2.log 2>&1
rc=$?
cat int2.log
[ $rc = 0 ] || fail "resumed study exited $rc"
grep -q '^skip .*(completed)' int2.log || fail "resume: completed runs not skipped"
cmp ref/laws.toml int/laws.toml || { diff ref/laws.toml int/laws.toml | head; fail "resumed study: laws differ"; }
"$sweep" study status int.toml | sed "s#$work/int#DIR#g" > s-int.txt
sed "s#$work/ref#DIR#g" status.txt > s-ref.txt
diff s-ref.txt s-int.txt || fail "resumed study: status (run results) differs"
diff <(sed 's#/ref/#/X/#g' ref/windtunnel/windtunnel.txt) <(sed 's#/int/#/X/#g' int/windtunnel/windtunnel.txt) ||
  fail "resumed study: wind tunnel differs"
echo "PASS"
