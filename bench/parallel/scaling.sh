#!/usr/bin/env bash
# scaling.sh: expert-parallel throughput of the default MoE benchmark model
# (input_decks/quickstart.toml) at 1 rank and at 2 ranks (EP = 2, all-to-all
# dispatcher), measured in the same run, one OpenBLAS thread per rank so the
# comparison is one core vs two cores. Prints tokens/s, the speed-up and the
# share of step time spent in token exchanges (from the run files' /timers).
#
#   bench/parallel/scaling.sh [BUILD_DIR] [TOKENS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
TOKENS="${2:-327680}"
TRAIN="$BUILD/src/apps/fulcrum-train"
OUT="$(mktemp -d /tmp/fulcrum-scaling.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cd "$ROOT"

run() {  # ranks ep dispatcher
  local dir="$OUT/np$1"
  rm -rf "$dir"
  mpiexec -n "$1" --oversubscribe --bind-to none "$TRAIN" input_decks/quickstart.toml --quiet \
    --set train.tokens="$TOKENS" --set train.eval_interval=100000 --set train.eval_tokens=8192 \
    --set parallel.expert_parallel="$2" --set parallel.dispatcher="$3" --set output.dir="$dir" \
    | grep '^FULCRUM_SUMMARY' | sed 's/.*tokens_per_s=\([0-9.]*\).*/\1/'
}
a2a_share() {  # run dir, ranks
  /usr/bin/python3 - "$1/run.h5" "$2" <<'PY'
import sys, h5py
f = h5py.File(sys.argv[1], "r"); t = f["timers"].attrs; n = int(sys.argv[2])
step = t["step.seconds"]
a2a = [t.get("alltoall_rank%d.seconds" % r, 0.0) for r in range(n)]
print("%.3f" % (max(a2a) / step if step > 0 else 0.0))
PY
}

tps1=$(run 1 1 local)
tps2=$(run 2 2 mpi_alltoall)
share2=$(a2a_share "$OUT/np2" 2)
rank_a2a=$(/usr/bin/python3 -c "
import h5py; t = h5py.File('$OUT/np2/run.h5', 'r')['timers'].attrs
print(' '.join('rank%d=%.2fs' % (r, t['alltoall_rank%d.seconds' % r]) for r in range(2)))")
rm -rf "$OUT/np2"
mv "$OUT/np1" "$OUT/np1-ep"
tps2dp=$(run 2 1 local)   # data parallel only: experts replicated, no token exchange
echo "model: input_decks/quickstart.toml (MoE E=8, top-2, 1 shared), $TOKENS tokens, OPENBLAS_NUM_THREADS=1"
echo "1 rank                     tokens/s = $tps1"
echo "2 ranks, EP=2 (all-to-all) tokens/s = $tps2   speed-up $(python3 -c "print('%.2f' % ($tps2 / $tps1))") (goal >= 1.7)"
echo "2 ranks, EP=1 (data par.)  tokens/s = $tps2dp   speed-up $(python3 -c "print('%.2f' % ($tps2dp / $tps1))")"
echo "all-to-all share of step time at EP=2 (rank max) = $share2  (time in exchanges: $rank_a2a;"
echo "  the difference between ranks is waiting for the rank whose experts got more tokens)"
