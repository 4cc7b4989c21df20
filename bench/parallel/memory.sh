#!/usr/bin/env bash
# memory.sh: peak host memory per rank of an expert-heavy MoE model at expert
# parallelism EP = 1, 2, 4 (one rank per shard, 4 ranks oversubscribed on
# fewer cores is fine: memory, not time, is measured). Prints per EP the peak
# RSS of the largest rank and bytes per token per layer (peak / (tokens of a
# rank's micro-batch x layers)); then splits the peak into a replicated part R
# and a sharded part X from EP = 1 and 2 (peak = R + X / EP), compares X with
# the routed experts' training state from the accounting (parameters,
# gradients, AdamW moments, bf16 copy), and checks EP = 4 against R + X / 4
# (goal: measured <= 1.5x; worst-case-sized exchange buffers would break it).
# Also prints, per EP, the peak of the Kokkos allocations of the largest rank
# against --describe's memory_estimate_bytes (balanced routing).
#
#   bench/parallel/memory.sh [BUILD_DIR] [STEPS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
STEPS="${2:-2}"
TRAIN="$BUILD/src/apps/fulcrum-train"
OUT="$(mktemp -d /tmp/fulcrum-memory.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cd "$ROOT"
# quickstart widened: d_model 256, 32 routed experts of width 512 top-2 + 1
# shared in all 4 layers: 50M of the 53M parameters are routed experts
MODEL=(--set model.d_model=256 --set model.n_heads=4 --set model.n_kv_heads=2 --set model.d_ffn=1024
       --set moe.num_experts=32 --set moe.d_expert=512 --set moe.first_k_dense=0
       --set train.batch_tokens=8192 --set train.micro_batch_size=4
       --set train.tokens=$((STEPS * 8192)) --set train.eval_interval=100000 --set train.eval_tokens=2048)
describe() { "$TRAIN" input_decks/quickstart.toml "${MODEL[@]}" --describe | sed -n "s/^$1 = //p"; }
layers=$(describe n_layers)
precision=$(describe precision)
routed=$((32 * 3 * 256 * 512 * layers))
state_bytes=$([ "$precision" = bf16 ] && echo 18 || echo 16)  # fp32 param, grad, m, v (+ bf16 copy)
dispatcher_for() { [ "$1" = 1 ] && echo local || echo mpi_alltoall; }
peak() {  # ranks -> peak RSS bytes of the largest rank; prints the Kokkos peak and the estimate to stderr
  local line
  line=$(mpiexec -n "$1" --oversubscribe --bind-to none "$TRAIN" input_decks/quickstart.toml --quiet "${MODEL[@]}" \
    --set parallel.expert_parallel="$1" --set parallel.dispatcher="$(dispatcher_for "$1")" \
    --set output.dir="$OUT/ep$1" | grep '^FULCRUM_SUMMARY')
  local est
  est=$("$TRAIN" input_decks/quickstart.toml "${MODEL[@]}" --set parallel.expert_parallel="$1" \
    --set parallel.dispatcher="$(dispatcher_for "$1")" --describe | sed -n 's/^memory_estimate_bytes = //p')
  echo "$line" | sed -n 's/.* peak_kokkos_mib=\([0-9.]*\).*/\1/p' |
    awk -v ep="$1" -v est="$est" '{ printf "BENCH_MEMORY_KOKKOS ep=%d peak_kokkos_mib=%.0f describe_estimate_mib=%.0f ratio=%.3f\n", ep, $1, est / 1048576, $1 * 1048576 / est }' >&2
  echo "$line" | sed -n 's/.* peak_rss_mib=\([0-9.]*\).*/\1/p' | awk '{ printf "%.0f", $1 * 1048576 }'
}
p1=$(peak 1); p2=$(peak 2); p4=$(peak 4)
/usr/bin/python3 - "$p1" "$p2" "$p4" "$layers" "$routed" "$state_bytes" "$precision" <<'PY'
import sys
p1, p2, p4 = (float(x) for x in sys.argv[1:4])
layers, routed, sb, prec = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
tokens_per_rank = 4 * 128  # micro_batch_size x seq_len
print(f"model: quickstart with d_model 256, 32 routed experts (d_expert 512) top-2 + 1 shared, {layers} MoE layers, "
      f"{routed / 1e6:.1f}M routed expert parameters; precision {prec}")
for ep, p in ((1, p1), (2, p2), (4, p4)):
    print(f"BENCH_MEMORY ep={ep} peak_rss_mib={p / 2**20:.0f} bytes_per_token_per_layer={p / (tokens_per_rank * layers):.0f}")
X = 2 * (p1 - p2)           # sharded part (peak = R + X / EP)
R = p1 - X
pred4 = R + X / 4
print(f"split from EP=1,2: replicated R = {R / 2**20:.0f} MiB, sharded X = {X / 2**20:.0f} MiB "
      f"(routed experts' training state {routed * sb / 2**20:.0f} MiB at {sb} bytes/parameter: ratio {X / (routed * sb):.2f})")
print(f"BENCH_MEMORY_CHECK ep=4 measured_mib={p4 / 2**20:.0f} expected_mib={pred4 / 2**20:.0f} "
      f"ratio={p4 / pred4:.2f} (goal <= 1.5)")
PY
