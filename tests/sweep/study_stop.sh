#!/usr/bin/env bash
# Studies that must stop, and study decks that must be rejected:
#  * a study whose first stage cannot fit Law 1 (two learning rates per
#    budget) stops at that stage's gate with exit 4, the reason and what to
#    run next; status shows it; the next stage is not planned;
#  * bad study decks exit 2 naming file, line and key (near-miss keys with a
#    suggestion);
#  * `study submit` with a stand-in sbatch: the stage's array, then the
#    dependent job that continues the study (--dependency=afterany:<array>).
# usage: study_stop.sh SOURCE_DIR WORK_DIR FULCRUM_SWEEP FULCRUM_TRAIN FULCRUM_FIT
set -u
src=$1 work=$2 sweep=$3 train=$4 fit=$5
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$src/data/default/train.tok" ] || fail "no $src/data/default/train.tok: run scripts/prepare-default-data.sh first"
rm -rf "$work" && mkdir -p "$work" || fail "cannot create $work"
cd "$work" || exit 1
export FULCRUM_TRAIN=$train FULCRUM_FIT=$fit OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

head_deck() {
cat <<DECK
[study]
name = "stop"
dir = "$work/stop"
jobs = 2
bootstrap = 0
plots = false
[deck.data]
train = "$src/data/default/train.tok"
valid = "$src/data/default/valid.tok"
[deck.model]
vocab_size = 257
d_model = 16
n_layers = 1
n_heads = 2
n_kv_heads = 2
d_ffn = 32
seq_len = 16
[deck.train]
tokens = 4096
batch_tokens = 512
micro_batch_size = 32
eval_interval = 100000
eval_tokens = 512
log_interval = 1000
DECK
}
# ---- 1. a stage whose law cannot be fitted
{ head_deck; cat <<DECK
[[stage]]
name = "hparams"
require = ["law1"]
[[stage.sweep]]
name = "dense"
budget_tolerance = 0.15
[stage.sweep.isoflop]
compute = [1e8, 3e8]
[stage.sweep.log2_grid]
train.lr = [-7, -5]
[[stage]]
name = "allocation"
require = ["law2"]
[[stage.sweep]]
name = "dense"
[stage.sweep.isoflop]
compute = [1e8, 3e8]
d_model = [8, 16, 32]
DECK
} > stop.toml
"$sweep" study run stop.toml -q > stop.log 2>&1
rc=$?
cat stop.log
[ $rc = 4 ] || fail "a study whose Law 1 cannot be fitted exited $rc, expected 4"
grep -q '^study stop: STOPPED at stage 1 "hparams"' stop.log || fail "no STOPPED line"
grep -q 'Law 1 \[dense\]: not fitted' stop.log || fail "no reason naming Law 1"
grep -q 'no hyper-parameter sweep: needs 2+ budgets, each with 3+ distinct (lr, batch) runs' stop.log || fail "no fit reason"
grep -q '^next: change stage 1 "hparams"' stop.log || fail "no next step"
grep -q '^FULCRUM_STUDY study=stop status=stopped stage=hparams' stop.log || fail "no summary line"
"$sweep" study status stop.toml > status.txt || fail "status"
cat status.txt
grep -q '^stage 1 "hparams" (requires law1): fitted, STOPPED at the gate; 4 runs: completed 4' status.txt || fail "status of stage 1"
grep -q 'reason: Law 1 \[dense\]: not fitted' status.txt || fail "status: reason"
grep -q '^stage 2 "allocation" (requires law2): not planned yet' status.txt || fail "status of stage 2"
[ -e stop/2-allocation ] && fail "stage 2 was planned"
# the same again: nothing retrained, same stop
"$sweep" study run stop.toml > stop2.log 2>&1
[ $? = 4 ] || fail "second run did not stop again with 4"
grep -q '^start ' stop2.log && fail "second run retrained"

# ---- 2. bad study decks: exit 2, file:line: key: message
n=0
bad() {  # expected-message deck-text
  n=$((n + 1))
  printf '%s\n' "$2" > bad$n.toml
  "$sweep" study status bad$n.toml > bad$n.out 2>&1
  local rc=$?
  [ $rc = 2 ] || { cat bad$n.out; fail "bad deck $n exited $rc, expected 2"; }
  grep -qF "fulcrum-sweep: error: bad$n.toml:$1" bad$n.out || { cat bad$n.out; fail "bad deck $n: expected 'bad$n.toml:$1'"; }
  echo "bad deck $n: $(cat bad$n.out)"
}
bad "3: study.jbos: unknown key; did you mean 'jobs'?" "$(printf '[study]\nname = "b"\njbos = 2\n')"
bad "1: sutdy: unknown key; did you mean 'study'?" "$(printf '[sutdy]\nname = "b"\n')"
bad '2: study.gate: '"'strict'"': expected "trusted" or "fitted"' "$(printf '[study]\ngate = "strict"\n[[stage]]\n')"
bad "4: stage[1].require: unknown law 'law5' (law1, law2, law3, el); did you mean 'law1'?" "$(printf '[study]\n[[stage]]\nname = "a"\nrequire = ["law5"]\n')"
bad "2: stage[1].require: required" "$(printf '[study]\n[[stage]]\nname = "a"\n[[stage.sweep]]\nname = "x"\n')"
bad "7: stage[1].sweep[1].isoflp: unknown key; did you mean 'isoflop'?" "$(printf '[study]\n[[stage]]\nname = "a"\nrequire = ["law1"]\n[[stage.sweep]]\nname = "x"\n[stage.sweep.isoflp]\ncompute = [1e9]\n')"
bad "7: stage[1].sweep[1].dir: set by the study" "$(printf '[study]\n[[stage]]\nname = "a"\nrequire = ["law1"]\n[[stage.sweep]]\nname = "x"\ndir = "y"\n')"
bad "8: stage[1].sweep[1].isoflop.compute: expected numbers" "$(printf '[study]\n[[stage]]\nname = "a"\nrequire = ["law1"]\n[[stage.sweep]]\nname = "x"\n[stage.sweep.isoflop]\ncompute = ["1e9"]\n')"
bad "31: stage[1].sweep[1].deck.train.lr: out of range" "$({ head_deck; printf '[[stage]]\nname = "a"\nrequire = ["law1"]\n[[stage.sweep]]\nname = "x"\n[stage.sweep.deck.train]\nlr = -1.0\n'; })"
bad "12: deck.model.d_modle: unknown key 'd_modle'; did you mean 'd_model'?" "$({ head_deck | sed 's/^d_model = 16/d_modle = 16/'; printf '[[stage]]\nname = "a"\nrequire = ["law1"]\n[[stage.sweep]]\nname = "x"\n'; })"
bad "2: (syntax): TOML syntax error" "$(printf '[study]\nname = "b\n')"
bad "31: stage[2].name: 'a' is used by two stages" "$({ head_deck; printf '[[stage]]\nname = "a"\nrequire = ["law1"]\n[[stage.sweep]]\nname = "x"\n[[stage]]\nname = "a"\nrequire = ["law2"]\n'; })"

# ---- 3. Slurm: the stage as an array, then the job that continues the study
mkdir -p bin
cat > bin/sbatch <<'SB'
#!/bin/bash
n=$(( $(cat "$(dirname "$0")/n" 2>/dev/null || echo 1000) + 1 )); echo $n > "$(dirname "$0")/n"
echo "$n $*" >> "$(dirname "$0")/calls"; echo "$n"
SB
chmod +x bin/sbatch
{ head_deck | sed -e "s#$work/stop#$work/slurm#" -e 's/^\[study\]$/[study]\nrequire = ["law1"]/'; cat <<DECK
[[stage]]
name = "hparams"
require = ["law1"]
[[stage.sweep]]
name = "dense"
budget_tolerance = 0.15
[stage.sweep.isoflop]
compute = [1e8, 3e8]
[stage.sweep.log2_grid]
train.lr = [-7, -6, -5]
DECK
} > slurm.toml
PATH=$work/bin:$PATH "$sweep" study submit slurm.toml --sbatch=--partition=debug > submit.log 2>&1 || { cat submit.log; fail "study submit"; }
cat submit.log; cat bin/calls
grep -q '^FULCRUM_STUDY_SUBMIT study=stop stage=hparams arrays=1001 next=1002$' submit.log || fail "submit line"
grep -q '^1001 --parsable --partition=debug .*/slurm/1-hparams/dense/slurm/sweep-array-r1.sbatch' bin/calls || fail "array job"
grep -q '^1002 --parsable --partition=debug --dependency=afterany:1001 .*/slurm/slurm/study-next-1.sbatch' bin/calls || fail "dependent job"
grep -q "study submit '$work/slurm.toml' '--throttle' '4'" slurm/slurm/study-next-1.sbatch || fail "the dependent job does not continue the study"
grep -q "^#SBATCH --chdir=$work\$" slurm/slurm/study-next-1.sbatch || fail "the dependent job does not run where the study was submitted"
# the array tasks (here: the local runner), then the dependent job: it fits,
# passes the gate and, this being the last stage, writes the final laws
"$sweep" run slurm/1-hparams/dense -j 2 -q > array.log 2>&1 || { cat array.log; fail "array stand-in"; }
# gate "trusted": Law 1 is fitted but its optima sit at the edge of the grid
PATH=$work/bin:$PATH bash slurm/slurm/study-next-1.sbatch > next0.log 2>&1
rc=$?
cat next0.log
[ $rc = 4 ] || fail "the dependent job with an untrustworthy Law 1 exited $rc, expected 4"
grep -q 'Law 1 \[dense\]: fitted, NOT TRUSTWORTHY' next0.log || fail "no untrustworthy reason"
grep -q 'extend the learning rate grid toward' next0.log || fail "no advice"
grep -q 'run `fulcrum-sweep study submit .*slurm.toml` again' next0.log || fail "next step does not say submit"
# gate "fitted" accepts it: the same job again goes on
sed -i 's/^\[study\]$/[study]\ngate = "fitted"/' slurm.toml
PATH=$work/bin:$PATH bash slurm/slurm/study-next-1.sbatch > next.log 2>&1
rc=$?
cat next.log
[ $rc = 0 ] || fail "the dependent job exited $rc"
grep -q '^stage 1 "hparams": gate passed' next.log || fail "dependent job: no gate"
grep -q '^FULCRUM_STUDY study=stop status=completed stages=1 ' next.log || fail "dependent job: study not completed"
[ "$(wc -l < bin/calls)" = 2 ] || fail "the dependent job submitted more jobs"
[ -f slurm/laws.toml ] || fail "no final laws after the dependent job"
echo "PASS"
