#!/usr/bin/env bash
# End to end, as a user would: the shipped tiny study deck
# (input_decks/studies/tiny.toml: hyper-parameters -> allocation -> A/G/S
# ablations -> EL, two budgets per stage, 34 tiny runs) through
#   fulcrum-sweep study run
# to a laws file with Law 2 and the EL joint law fitted and a wind-tunnel
# report; a second `study run` trains and fits nothing; then stage 3 is made
# again from scratch (its directory deleted), killed (SIGKILL to the command
# and its trainers) in the middle and resumed with the same command: the same
# laws, run results and wind tunnel as the uninterrupted first pass.
# Needs data/default.
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
# one CSV line per run: DIR/runs.csv (written by study run) = study status --csv
"$sweep" study status ref.toml --csv > runs-status.csv || fail "study status --csv"
cmp runs-status.csv ref/runs.csv || fail "study status --csv differs from DIR/runs.csv"
head -1 ref/runs.csv | grep -q '^stage,sweep,id,status,is_moe,d_model,.*,budget,compute,tokens,final_train_loss,final_val_loss,' ||
  fail "runs.csv header"
[ "$(grep -c '^[a-z]*,[a-z]*,[^,]*,completed,' ref/runs.csv)" = 34 ] || fail "runs.csv: expected 34 completed runs"
awk -F, 'NR > 1 && ($21 == "" || $18 <= 0 || NF != 23) { bad = 1 } END { exit bad }' ref/runs.csv ||
  fail "runs.csv: a row without 23 fields, a compute or a validation loss"
grep -q '^ablations,granularity,' ref/runs.csv || fail "runs.csv: no ablation rows"
"$sweep" status ref/1-hparams/dense --csv | awk -F, 'NR > 1 && $1 != "" { bad = 1 } END { exit bad || NR != 7 }' ||
  fail "status --csv of one sweep: 6 runs with an empty stage"
# a second run does nothing
"$sweep" study run ref.toml > again.log 2>&1 || { cat again.log; fail "second study run"; }
grep -q '^start ' again.log && fail "second study run started runs"
[ "$(grep -c 'fit is up to date' again.log)" = 3 ] || { cat again.log; fail "second study run refitted"; }

# ---- 2. stage 3 again from scratch, killed in its middle, resumed
# (the first pass is the uninterrupted reference)
sed "s#$work/ref#DIR#g" status.txt > s-ref.txt
cp ref/laws.toml ref-laws.toml && cp ref/windtunnel/windtunnel.txt ref-windtunnel.txt || fail "copy"
rm -rf ref/3-ablations ref/laws.toml ref/final.state ref/windtunnel ref/windtunnel.log
setsid "$sweep" study run ref.toml > int1.log 2>&1 &
pid=$!
for i in $(seq 1 600); do  # until two runs of stage 3 have completed and others run
  [ "$(grep -c '^completed ' int1.log)" -ge 2 ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -0 $pid 2>/dev/null || { cat int1.log; fail "the study ended before it could be killed"; }
# SIGKILL to the command and every trainer it started: each run has its own
# process group, all of them are in the session setsid made
kill -KILL $(ps -o pid= -s $pid) 2>/dev/null
wait $pid 2>/dev/null
for i in $(seq 1 50); do [ -z "$(ps -o pid= -s $pid)" ] && break; sleep 0.1; done
[ -z "$(ps -o pid= -s $pid)" ] || fail "processes of the killed study survive: $(ps -o pid,args -s $pid)"
cat int1.log
grep -q '^stage 1 "hparams": 2 sweep(s), 12 runs: completed 12$' int1.log || fail "stage 1 was not kept"
grep -q '^stage 2 "allocation": 2 sweep(s), 12 runs: completed 12, planned from' int1.log || fail "stage 2 was not kept"
[ "$(grep -c 'fit is up to date' int1.log)" = 2 ] || fail "the fits of stages 1-2 were not reused"
"$sweep" study status ref.toml --brief > int-status.txt
cat int-status.txt
grep -q '^stage 3 "ablations" (requires law3 el): running; 10 runs: completed [0-9]* pending [0-9]*$' int-status.txt ||
  fail "killed study: stage 3 not shown as running with its killed runs pending"
grep -q '^final laws: not yet' int-status.txt || fail "killed study: final laws shown"
"$sweep" study run ref.toml > int2.log 2>&1
rc=$?
cat int2.log
[ $rc = 0 ] || fail "resumed study exited $rc"
grep -q '^skip .*(completed)' int2.log || fail "resume: completed runs not skipped"
grep -q '^start ' int2.log || fail "resume: the interrupted runs were not run again"
cmp ref-laws.toml ref/laws.toml || { diff ref-laws.toml ref/laws.toml | head; fail "resumed study: laws differ"; }
"$sweep" study status ref.toml | sed "s#$work/ref#DIR#g" > s-int.txt
diff s-ref.txt s-int.txt || fail "resumed study: status (run results) differs"
diff ref-windtunnel.txt ref/windtunnel/windtunnel.txt || fail "resumed study: wind tunnel differs"
echo "PASS"
