#!/usr/bin/env bash
# throughput.sh: the quickstart model's training throughput against an sgemm
# measured in the same run, and against PyTorch on the same machine.
#
#   bench/train/throughput.sh [BUILD_DIR]      (default: <repo>/build)
#
# Needs BUILD_DIR/src/apps/fulcrum-train, BUILD_DIR/bench/train/bench-sgemm
# (cmake --build BUILD_DIR --target fulcrum-train bench-sgemm) and
# data/default (scripts/prepare-default-data.sh). Steps, all with the same
# OpenBLAS thread count (OPENBLAS_NUM_THREADS, default: all cores, nproc):
#   (a) bench-sgemm: 1024^3 sgemm through KokkosBlas::gemm, mean GFLOP/s;
#   (b) fulcrum-train input_decks/quickstart.toml for BENCH_TOKENS (default
#       163840 = 20 steps of 8192) with evaluation reduced to the minimum;
#       tokens/s is the summary's (training steps only), model FLOP/s =
#       tokens/s x flops_per_token (from --describe);
#   (c) if /usr/bin/python3 has torch: bench/train/torch_throughput.py, the
#       same model in PyTorch (forward + backward + AdamW), tokens/s.
# Prints the numbers and the ratios model FLOP/s / sgemm FLOP/s and
# fulcrum / pytorch tokens/s, ending with one BENCH_TRAIN line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
TRAIN="$BUILD/src/apps/fulcrum-train"
SGEMM="$BUILD/bench/train/bench-sgemm"
TOKENS="${BENCH_TOKENS:-163840}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(nproc)}"
export OMP_NUM_THREADS="$OPENBLAS_NUM_THREADS"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

for f in "$TRAIN" "$SGEMM"; do
  [ -x "$f" ] || { echo "throughput: missing $f (cmake --build $BUILD --target fulcrum-train bench-sgemm)" >&2; exit 2; }
done
[ -f "$ROOT/data/default/train.tok" ] || { echo "throughput: no data/default (scripts/prepare-default-data.sh)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$ROOT"
echo "throughput: $(nproc) cores, OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS, $(uname -m), $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# (a) sgemm
sg_line="$("$SGEMM" 1024 20 | grep '^BENCH_SGEMM')"
echo "(a) $sg_line"
sg_gflops="$(sed -n 's/.*gflops_mean=\([0-9.eE+-]*\).*/\1/p' <<<"$sg_line")"

# (b) fulcrum-train
M="$("$TRAIN" input_decks/quickstart.toml --describe | sed -n 's/^flops_per_token = //p')"
sum_line="$("$TRAIN" input_decks/quickstart.toml --quiet \
  --set "train.tokens=$TOKENS" --set train.eval_interval=100000 --set train.eval_tokens=2048 \
  --set train.log_interval=10 --set "output.dir=\"$work/run\"" | grep '^FULCRUM_SUMMARY')"
echo "(b) $sum_line"
tps="$(sed -n 's/.* tokens_per_s=\([0-9.eE+-]*\).*/\1/p' <<<"$sum_line")"

# (c) PyTorch
torch_tps=""
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  t_line="$(/usr/bin/python3 "$ROOT/bench/train/torch_throughput.py" --threads "$OPENBLAS_NUM_THREADS" | grep '^BENCH_TORCH')"
  echo "(c) $t_line"
  torch_tps="$(sed -n 's/.*tokens_per_s=\([0-9.eE+-]*\).*/\1/p' <<<"$t_line")"
else
  echo "(c) skipped: /usr/bin/python3 has no torch"
fi

awk -v sg="$sg_gflops" -v tps="$tps" -v M="$M" -v tt="$torch_tps" -v th="$OPENBLAS_NUM_THREADS" 'BEGIN {
  mf = tps * M
  printf "quickstart: flops_per_token %.6g, tokens/s %.1f, model FLOP/s %.4g (%.2f GFLOP/s)\n", M, tps, mf, mf / 1e9
  printf "sgemm 1024^3: %.2f GFLOP/s; model FLOP/s / sgemm FLOP/s = %.4f\n", sg, mf / (sg * 1e9)
  line = sprintf("BENCH_TRAIN threads=%s tokens_per_s=%.1f model_gflops=%.3f sgemm_gflops=%.2f mfu_vs_sgemm=%.4f", th, tps, mf / 1e9, sg, mf / (sg * 1e9))
  if (tt != "") {
    printf "pytorch: tokens/s %.1f; fulcrum / pytorch = %.3f\n", tt, tps / tt
    line = line sprintf(" torch_tokens_per_s=%.1f fulcrum_over_torch=%.3f", tt, tps / tt)
  }
  print line
}'
