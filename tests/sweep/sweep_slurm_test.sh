#!/usr/bin/env bash
# sweep_slurm_test.sh: a real Slurm test. Brings up a single-node cluster
# (scripts/slurm-local-cluster.sh: munged + slurmctld + slurmd from Debian's
# packages), submits a tiny sweep as a job array (fulcrum-sweep submit) with
# the chained postprocessing job, plus a 2-task MPI run from
# jobscripts/ep-run.sbatch, waits (with a timeout), checks every run file and
# the postprocessing output; then submits the tiny study (fulcrum-sweep study
# submit: each stage an array, the fit and the next stage a dependent job)
# and waits for its final laws; tears the cluster down by PID.
#
#   sweep_slurm_test.sh SOURCE_DIR WORK_DIR FULCRUM_SWEEP FULCRUM_TRAIN [FULCRUM_FIT]
#
# It never skips: without root or the Slurm packages it fails and says why.
set -uo pipefail
SRC=$1 WORK=$2 SWEEP=$3 TRAIN=$4 FIT=${5:-}
TIMEOUT_S=${FULCRUM_SLURM_TEST_TIMEOUT:-240}
T0=$SECONDS
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

[ "$(id -u)" = 0 ] || fail "this test starts slurmd and munged and must run as root"
for b in slurmctld slurmd sbatch squeue scontrol munged mpiexec; do
    command -v "$b" >/dev/null || fail "'$b' not found: install slurmctld slurmd slurm-client munge libpmix-dev openmpi-bin (scripts/install-deps.sh)"
done
[ -x "$SWEEP" ] && [ -x "$TRAIN" ] || fail "executables missing: $SWEEP $TRAIN"
[ -n "$FIT" ] && [ ! -x "$FIT" ] && FIT=

rm -rf "$WORK" && mkdir -p "$WORK" || fail "cannot create $WORK"
cd "$WORK" || exit 1
export FULCRUM_SLURM_DIR=$WORK/cluster
export SLURM_CONF=$FULCRUM_SLURM_DIR/etc/slurm.conf
export HDF5_USE_FILE_LOCKING=FALSE
cleanup() { "$SRC/scripts/slurm-local-cluster.sh" stop; }
trap cleanup EXIT
"$SRC/scripts/slurm-local-cluster.sh" start || fail "could not bring up Slurm (see $FULCRUM_SLURM_DIR/log)"

# ---- tiny token files: the bytes of the project's docs as uint16 tokens (doc/data-format.md)
le() { local v=$1 n=$2 s=; for ((i = 0; i < n; i++)); do s+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done; printf "$s"; }
tokfile() {  # out text-file max-tokens
    local bytes count
    bytes=$(head -c "$3" "$2" | od -An -v -tu1)
    count=$(wc -w <<<"$bytes")
    { printf 'FULCRTOK'; le 1 4; le 257 4; le 2 4; le 0 4; le "$count" 8
      printf "$(printf '\\x%02x\\x00' $bytes)"; } >"$1"
}
cat "$SRC"/doc/*.md >corpus.txt
tokfile train.tok corpus.txt 30000
tail -c 4000 corpus.txt >valid.txt && tokfile valid.tok valid.txt 4000
[ "$(stat -c %s train.tok)" -gt 1000 ] || fail "could not write token files"

# ---- the sweep: 3 sizes x 2 budgets (an IsoFLOP ladder fulcrum-fit can use)
cat >tiny.toml <<DECK
[sweep]
name = "slurm-tiny"
[sweep.isoflop]
compute = [3e9, 1e10]
d_model = [32, 64, 96]
[data]
train = "$WORK/train.tok"
valid = "$WORK/valid.tok"
[model]
d_model = 32
n_layers = 1
n_heads = 2
n_kv_heads = 1
d_ffn = 64
seq_len = 32
[moe]
num_experts = 4
num_active_experts = 1
num_shared_experts = 1
d_expert = 16
[train]
batch_tokens = 64
micro_batch_size = 2
lr = 0.004
eval_interval = 10
eval_tokens = 256
log_interval = 5
DECK
"$SWEEP" plan tiny.toml --out "$WORK/sweep" || fail "plan"
N=$(grep -c '^\[\[run\]\]' sweep/manifest.toml)

fit_args=()
[ -n "$FIT" ] && fit_args=(--fit "$FIT")
out=$("$SWEEP" submit "$WORK/sweep" --throttle 2 --train "$TRAIN" "${fit_args[@]}") || fail "submit: $out"
echo "$out"
line=$(grep '^FULCRUM_SUBMIT' <<<"$out")
ARRAY=$(sed 's/.*array=\([^ ]*\).*/\1/' <<<"$line")
POST=$(sed 's/.*postprocess=\([^ ]*\).*/\1/' <<<"$line")
[[ "$ARRAY" =~ ^[0-9]+$ && "$POST" =~ ^[0-9]+$ ]] || fail "no job ids in: $line"
scontrol show job "$POST" | grep -q "Dependency=afterany:$ARRAY" && ok "postprocessing $POST depends on array $ARRAY" \
    || { scontrol show job "$POST"; fail "postprocessing job has no afterany dependency on $ARRAY"; }

# ---- the MPI run over 2 tasks: one deck, the ep-run.sbatch template
cp sweep/runs/"$(sed -n '2p' sweep/runs.tsv | cut -f2)"/deck.toml ep-deck.toml
sed -i -e "s|^dir = .*|dir = \"$WORK/ep-run\"|" -e 's|^name = .*|name = "ep-run"|' \
       -e 's|^world_size = .*|world_size = 2|' -e 's|^expert_parallel = .*|expert_parallel = 2|' \
       -e 's|^dispatcher = .*|dispatcher = "mpi_alltoall"|' -e 's|^batch_tokens = .*|batch_tokens = 128|' ep-deck.toml
mkdir -p logs
sed -e "s|@JOB_NAME@|ep-run|g; s|@NODES@|1|g; s|@TASKS_PER_NODE@|2|g; s|@GPUS_PER_NODE@|0|g" \
    -e "s|@DECK@|$WORK/ep-deck.toml|g; s|@FULCRUM_TRAIN@|$TRAIN|g; s|@LOG_DIR@|$WORK/logs|g; s|@MPI@|pmix|g" \
    "$SRC/jobscripts/ep-run.sbatch" >ep-run.sbatch
grep -q '@[A-Z_]*@' ep-run.sbatch && fail "unfilled placeholder in ep-run.sbatch"
EP=$(sbatch --parsable ep-run.sbatch) || fail "sbatch ep-run"
ok "submitted array $ARRAY ($N runs), postprocessing $POST, MPI run $EP ($((SECONDS - T0)) s)"

# ---- wait
deadline=$((SECONDS + TIMEOUT_S))
while [ -n "$(squeue -h -j "$ARRAY,$POST,$EP" -o %i 2>/dev/null)" ]; do
    if ((SECONDS > deadline)); then
        squeue; "$SWEEP" status "$WORK/sweep"
        fail "jobs still queued/running after ${TIMEOUT_S}s"
    fi
    sleep 1
done
ok "all jobs left the queue ($((SECONDS - T0)) s)"

# ---- checks
rc=0
state() { scontrol -o show job "$1" | grep -o 'JobState=[A-Z_]*' | sort | uniq -c | tr -s ' ' | tr '\n' ';'; }
echo "array: $(state "$ARRAY")  postprocess: $(state "$POST")  mpi: $(state "$EP")"
status=$("$SWEEP" status "$WORK/sweep")
echo "$status"
grep -q "completed $N running 0 diverged 0 failed 0 pending 0" <<<"$status" && ok "every array run completed" \
    || { echo "FAIL: not every sweep run completed"; cat sweep/slurm/logs/*.out; rc=1; }
while read -r f; do
    case "$f" in '#'*|'') continue ;; esac
    st=$(h5dump -a /status "$f" 2>/dev/null | grep -o '"[a-z]*"' | tail -1)
    [ "$st" = '"completed"' ] || { echo "FAIL: $f status $st"; rc=1; }
done <sweep/runs.list
ok "run files checked"
post_log=$(ls sweep/slurm/logs/*post*.out 2>/dev/null | head -1)
cat "$post_log"
if [ -n "$FIT" ]; then
    grep -q "$N usable run(s) from $N file(s)" "$post_log" || { echo "FAIL: fulcrum-fit did not read all $N run files"; rc=1; }
    if [ -f sweep/fit/laws.toml ]; then
        grep -q 'format = "fulcrum-laws"' sweep/fit/laws.toml && ok "laws file written" || { echo "FAIL: bad laws file"; rc=1; }
    else
        echo "NOTE: fulcrum-fit read every run file but fitted nothing on this tiny sweep (see above); no laws.toml"
    fi
else
    grep -q 'bad=0' sweep/fit/check.txt 2>/dev/null && ok "stand-in postprocessing passed" || { echo "FAIL: stand-in postprocessing"; rc=1; }
fi
ep_log=$(ls logs/ep-run-*.out 2>/dev/null | head -1)
cat "$ep_log"
grep -q "EP run: 2 ranks" "$ep_log" || { echo "FAIL: the MPI job did not run 2 tasks"; rc=1; }
if [ -f ep-run/run.h5 ] && h5dump -a /status ep-run/run.h5 2>/dev/null | grep -q '"completed"'; then
    ok "MPI run over 2 tasks completed ($(h5dump -a /world_size ep-run/run.h5 2>/dev/null | grep -o '(0): [0-9]*'))"
else
    grep -q "trains on one rank only" "$ep_log" && echo "FAIL: fulcrum-train refuses 2 ranks (expert parallelism, issue 3, not in this build); the 2-task srun launch itself worked"
    echo "FAIL: MPI run over 2 tasks did not complete"; rc=1
fi

# ---- a whole study through Slurm (doc/studies.md, "Slurm"): `study submit`
# submits stage 1's arrays and a dependent job; each such job fits, gates and
# submits the next stage with another, the last writes the final laws.
if [ -z "$FIT" ]; then
    echo "FAIL: the study part needs fulcrum-fit (FULCRUM_ENABLE_FIT)"; rc=1
elif [ ! -f "$SRC/data/default/train.tok" ]; then
    echo "FAIL: no $SRC/data/default/train.tok: run scripts/prepare-default-data.sh first"; rc=1
else
    sed -e "s#\"data/default/#\"$SRC/data/default/#" -e "s#^dir = \"runs/studies/tiny\"#dir = \"$WORK/study\"#" \
        "$SRC/input_decks/studies/tiny.toml" >study.toml
    out=$("$SWEEP" study submit study.toml --throttle 4 --train "$TRAIN" --fit "$FIT" 2>&1) || { echo "$out"; fail "study submit"; }
    echo "$out"
    grep -q '^FULCRUM_STUDY_SUBMIT study=tiny stage=hparams arrays=[0-9,]* next=[0-9]*$' <<<"$out" || fail "study submit line"
    deadline=$((SECONDS + ${FULCRUM_SLURM_STUDY_TIMEOUT:-480}))
    # the chain keeps a job queued until the last one has written the final laws
    while [ -n "$(squeue -h -o %i 2>/dev/null)" ]; do
        if ((SECONDS > deadline)); then squeue; "$SWEEP" study status study.toml --brief; fail "study jobs still queued after ${FULCRUM_SLURM_STUDY_TIMEOUT:-480}s"; fi
        sleep 1
    done
    st=$("$SWEEP" study status study.toml --brief)
    echo "$st"
    if [ "$(grep -c 'fitted, gate passed' <<<"$st")" = 3 ] && grep -q '^final laws .*: complete' <<<"$st" &&
       grep -q '^\[el.joint\]' study/laws.toml && [ -f study/windtunnel/windtunnel.txt ]; then
        ok "tiny study through Slurm: 3 stages chained by dependent jobs, final laws with the EL joint law, wind tunnel ($((SECONDS - T0)) s)"
    else
        echo "FAIL: the study did not complete through Slurm"; tail -n 20 study/slurm/logs/*.out; rc=1
    fi
    [ "$(grep -c ',completed,' study/runs.csv)" = 34 ] || { echo "FAIL: study/runs.csv: expected 34 completed runs"; rc=1; }
fi

echo "total $((SECONDS - T0)) s"
[ $rc = 0 ] && echo "PASSED" || echo "FAILED"
exit $rc
