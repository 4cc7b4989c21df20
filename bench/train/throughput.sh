#!/usr/bin/env bash
# throughput.sh: training throughput of two models against the matrix-product
# peaks and against PyTorch, all measured in the same run with the same threads.
#
#   bench/train/throughput.sh [BUILD_DIR]      (default: <repo>/build)
#
# Needs BUILD_DIR/src/apps/fulcrum-train, BUILD_DIR/bench/train/bench-gemm
# (cmake --build BUILD_DIR --target fulcrum-train bench-gemm) and data/default
# (scripts/prepare-default-data.sh). Threads: BENCH_THREADS (default: all
# cores), exported as OPENBLAS_NUM_THREADS and OMP_NUM_THREADS.
#   (a) bench-gemm: 1024^3 products through every gemm backend and precision
#       (OpenBLAS sgemm via kokkos, oneDNN fp32, oneDNN bf16 where native):
#       the bf16 peak is the oneDNN bf16 line's mean GFLOP/s;
#   (b) per model (input_decks/quickstart.toml, bench/train/study-size.toml):
#       fulcrum-train in fp32 and in bf16 (bf16 only where native) for
#       BENCH_STEPS optimizer steps (default 12; evaluation reduced to the
#       minimum), each at two layouts of the same THREADS cores (1 rank x
#       THREADS threads, THREADS data-parallel ranks x 1 thread; the faster
#       counts); tokens/s is the summary's (training steps only), model
#       FLOP/s = tokens/s x flops_per_token (--describe); nonmatrix_share is
#       the summary's share of step time outside matrix products (rank 0);
#   (c) per model, if /usr/bin/python3 has torch: bench/train/torch_throughput.py,
#       the same model in PyTorch in fp32 and with bf16 autocast.
# Ends with one line per model:
#   BENCH_TRAIN model=<name> threads=<n> precision=<p> tokens_per_s=<x> model_gflops=<x>
#     bf16_peak_gflops=<x> fraction_of_bf16_peak=<x> torch_best_tokens_per_s=<x> over_torch_best=<x> ...
# where precision is Fulcrum's fastest precision on this machine and
# torch_best the faster of PyTorch fp32 and bf16 autocast.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
TRAIN="$BUILD/src/apps/fulcrum-train"
GEMM="$BUILD/bench/train/bench-gemm"
STEPS="${BENCH_STEPS:-12}"
THREADS="${BENCH_THREADS:-$(nproc)}"
export OPENBLAS_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

for f in "$TRAIN" "$GEMM"; do
  [ -x "$f" ] || { echo "throughput: missing $f (cmake --build $BUILD --target fulcrum-train bench-gemm)" >&2; exit 2; }
done
[ -f "$ROOT/data/default/train.tok" ] || { echo "throughput: no data/default (scripts/prepare-default-data.sh)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$ROOT"
echo "throughput: $(nproc) cores, $THREADS threads, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

# (a) matrix-product peaks
"$GEMM" 1024 20 | tee "$work/gemm.txt" | sed 's/^/(a) /'
peak="$(grep 'backend=onednn precision=bf16' "$work/gemm.txt" | sed -n 's/.*gflops_mean=\([0-9.]*\).*/\1/p')"
fp32_peak="$(grep 'precision=fp32' "$work/gemm.txt" | sed -n 's/.*gflops_mean=\([0-9.]*\).*/\1/p' | sort -g | tail -1)"
precisions="fp32"
if [ -n "$peak" ]; then precisions="fp32 bf16"; else peak="$fp32_peak"; echo "(a) no native bf16: fractions are of the best fp32 peak"; fi

declare -A result
for model in quickstart study-size; do
  deck="input_decks/quickstart.toml"
  [ "$model" = study-size ] && deck="bench/train/study-size.toml"
  M="$("$TRAIN" "$deck" --describe | sed -n 's/^flops_per_token = //p')"
  bt="$(sed -n 's/^batch_tokens *= *\([0-9]*\).*/\1/p' "$deck")"
  for p in $precisions; do
    # two layouts of the same threads: 1 rank x THREADS threads (threads in the
    # products only: Debian's Kokkos is Serial), THREADS data-parallel ranks x 1 thread
    best_tps=0; best_layout=""; best_nm=""
    for layout in "1 $THREADS" "$THREADS 1"; do
      set -- $layout
      line="$(OPENBLAS_NUM_THREADS=$2 OMP_NUM_THREADS=$2 mpiexec -n "$1" --oversubscribe --bind-to none "$TRAIN" "$deck" --quiet \
        --set "train.tokens=$((STEPS * bt))" --set train.eval_interval=1000000 \
        --set train.eval_tokens=4096 --set train.log_interval=4 --set "train.precision=\"$p\"" \
        --set "output.dir=\"$work/$model-$p-$1\"" | grep '^FULCRUM_SUMMARY')"
      echo "(b) $model $p ranks=$1 threads_per_rank=$2: $line"
      tps="$(field tokens_per_s "$line")"
      if awk -v a="$tps" -v b="$best_tps" 'BEGIN { exit !(a > b) }'; then
        best_tps="$tps"; best_layout="ranks=$1 threads_per_rank=$2"; best_nm="$(field nonmatrix_share "$line")"
      fi
    done
    result[$model.$p]="$best_tps"
    result[$model.$p.layout]="$best_layout"
    result[$model.$p.nonmatrix]="$best_nm"
  done
  result[$model.M]="$M"
  result[$model.torch_fp32]=""
  result[$model.torch_bf16]=""
  if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    for ac in "" --autocast; do
      t_line="$(/usr/bin/python3 bench/train/torch_throughput.py "$deck" --threads "$THREADS" --steps 3 $ac | grep '^BENCH_TORCH')"
      echo "(c) $model: $t_line"
      if [ -z "$ac" ]; then result[$model.torch_fp32]="$(field tokens_per_s "$t_line")"
      else result[$model.torch_bf16]="$(field tokens_per_s "$t_line")"; fi
    done
  else
    echo "(c) skipped: /usr/bin/python3 has no torch"
  fi
done

best="${precisions##* }"
for model in quickstart study-size; do
  awk -v model="$model" -v th="$THREADS" -v p="$best" -v tps="${result[$model.$best]}" -v tf="${result[$model.fp32]}" \
      -v layout="${result[$model.$best.layout]}" -v nm="${result[$model.$best.nonmatrix]}" \
      -v M="${result[$model.M]}" -v peak="$peak" -v fp="$fp32_peak" -v t32="${result[$model.torch_fp32]}" \
      -v t16="${result[$model.torch_bf16]}" 'BEGIN {
    mf = tps * M / 1e9
    tb = (t32 + 0 > t16 + 0) ? t32 : t16
    line = sprintf("BENCH_TRAIN model=%s threads=%s precision=%s tokens_per_s=%.1f model_gflops=%.2f bf16_peak_gflops=%.1f fraction_of_bf16_peak=%.4f", model, th, p, tps, mf, peak, mf / peak)
    if (tb != "") line = line sprintf(" torch_best_tokens_per_s=%.1f over_torch_best=%.3f", tb, tps / tb)
    line = line sprintf(" nonmatrix_share=%s %s fp32_tokens_per_s=%.1f fp32_peak_gflops=%.1f", nm, layout, tf, fp)
    if (t32 != "") line = line sprintf(" torch_fp32_tokens_per_s=%.1f torch_bf16_tokens_per_s=%.1f", t32, t16)
    print line
  }'
done
