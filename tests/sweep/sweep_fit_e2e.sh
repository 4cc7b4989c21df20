#!/usr/bin/env bash
# End to end, as a user would: plan a tiny dense IsoFLOP sweep with
# fulcrum-sweep (3 budgets x 3 widths, budget_tolerance 0.1), train it with
# fulcrum-train, fit it with fulcrum-fit, and check that
#   * every planned deck and run file records its budget (train.compute_budget),
#   * fulcrum-fit groups the 9 runs into 3 budgets of 3 runs although each
#     run's compute misses its budget (whole batches),
#   * the same run files without the recorded budget are clustered into the
#     same 3 budgets,
#   * the report gives a verdict for Law 2 and Law 3 with reasons, and
#     --strict exits 4 exactly when a fitted law is flagged NOT TRUSTWORTHY.
# Needs data/default (scripts/prepare-default-data.sh) and /usr/bin/python3 with h5py.
# usage: sweep_fit_e2e.sh SOURCE_DIR WORK_DIR FULCRUM_SWEEP FULCRUM_TRAIN FULCRUM_FIT
set -u
src=$1 work=$2 sweep=$3 train=$4 fit=$5
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$src/data/default/train.tok" ] || fail "no $src/data/default/train.tok: run scripts/prepare-default-data.sh first"
rm -rf "$work" && mkdir -p "$work" || fail "cannot create $work"
cd "$work" || exit 1
export FULCRUM_TRAIN=$train OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cat > iso.toml <<DECK
[sweep]
name = "e2e-iso"
budget_tolerance = 0.1
[sweep.isoflop]
compute = [3e9, 1e10, 3e10]
d_model = [16, 32, 64]
[data]
train = "$src/data/default/train.tok"
valid = "$src/data/default/valid.tok"
[model]
vocab_size = 257
d_model = 32
n_layers = 2
n_heads = 2
n_kv_heads = 2
d_ffn = 64
seq_len = 32
[train]
tokens = 4096
batch_tokens = 1024
micro_batch_size = 8
lr = 0.01
eval_interval = 20
eval_tokens = 4096
log_interval = 10
DECK

"$sweep" plan iso.toml --out sweep > plan.log 2>&1 || { cat plan.log; fail "plan"; }
n=$(ls sweep/runs | wc -l)
[ "$n" = 9 ] || fail "planned $n runs, expected 9"
for d in sweep/runs/*/deck.toml; do
  grep -q '^compute_budget = ' "$d" || fail "$d has no compute_budget"
done
"$sweep" run sweep -j 2 > run.log 2>&1 || { tail -20 run.log; fail "sweep run"; }

# every run's compute misses its budget a little, and the budget is recorded
/usr/bin/python3 - <<'PY' || fail "run files"
import glob, h5py
miss = 0
for f in sorted(glob.glob("sweep/runs/*/run.h5")):
    with h5py.File(f, "r") as h:
        b = float(h["config"].attrs["compute_budget"])
        c = float(h["summary"].attrs["flops_seen"])
        assert b in (3e9, 1e10, 3e10), (f, b)
        assert abs(c / b - 1) <= 0.1, (f, c, b)
        miss = max(miss, abs(c / b - 1))
assert miss > 1e-4, "no run misses its budget: the grouping is not exercised"
print("largest miss of a budget: %.3g%%" % (100 * miss))
PY

"$fit" fit sweep/runs.list --out fit --bootstrap 50 > fit.log 2>&1
rc=$?
cat fit.log
[ $rc = 0 ] || fail "fit exited $rc"
rep=fit/report.txt
for C in 3e+09 1e+10 3e+10; do
  grep -q "^  C=$C: 3 run(s), recorded budget" $rep || fail "budget $C not grouped from the recorded budget"
done
[ "$(grep -c '^  C=' $rep)" = 3 ] || fail "expected exactly 3 budgets"
grep -q '^  Law 2 \[dense\]: ' $rep || fail "no Law 2 verdict"
grep -q '^  Law 3 \[dense\]: ' $rep || fail "no Law 3 verdict"
sed -n '/^Budgets/,/^Bootstrap/p' $rep

# --strict: exit 4 exactly when a fitted law is NOT TRUSTWORTHY
"$fit" fit sweep/runs.list --out fit-strict --bootstrap 50 --strict > strict.log 2>&1
rc=$?
if grep -q 'fitted, NOT TRUSTWORTHY' fit-strict/report.txt; then
  [ $rc = 4 ] || fail "--strict with an untrusted law exited $rc, expected 4"
  grep -q 'a requested law is not trustworthy' strict.log || fail "no --strict message"
else
  [ $rc = 0 ] || fail "--strict with every fitted law trusted exited $rc"
fi

# the same runs without the recorded budget: clustered within the 10% tolerance
mkdir -p norec && cp -r sweep/runs norec/ || fail "copy"
/usr/bin/python3 - <<'PY' || fail "strip compute_budget"
import glob, h5py
for f in glob.glob("norec/runs/*/run.h5"):
    with h5py.File(f, "r+") as h:
        del h["config"].attrs["compute_budget"]
PY
"$fit" fit norec/runs --out fit-norec --bootstrap 0 > norec.log 2>&1 || { cat norec.log; fail "fit without budgets"; }
[ "$(grep -c '^  C=.*: 3 run(s), no recorded budget: clustered within 10%' fit-norec/report.txt)" = 3 ] ||
  { sed -n '/^Budgets/,/^Diag/p' fit-norec/report.txt; fail "runs without a recorded budget not clustered into 3 budgets"; }
echo "PASS"
