#!/usr/bin/python3
"""PyTorch training throughput of the quickstart model (bench/train/throughput.sh).

    /usr/bin/python3 torch_throughput.py [--steps 6] [--warmup 1] [--threads N]

Builds the model of tests/reference/torch_reference.py (the same model as
fulcrum-train, doc/model.md) at input_decks/quickstart.toml's shapes (d_model
128, 4 layers, 4 heads / 2 KV heads, seq 128, MoE E=8 k=2, 1 shared expert,
d_expert 128, first layer dense with d_ffn 512, vocab 257), float32, and times
full optimizer steps of the quickstart's batch (8192 tokens = 4 micro-batches
of 16 x 128): forward + backward per micro-batch, global-norm clipping at 1.0,
torch.optim.AdamW. Tokens are uniform random bytes (throughput only).
Prints one line:
  BENCH_TORCH tokens_per_s=... steps=... threads=... torch=...
"""
import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import torch_reference as ref  # noqa: E402

CFG = dict(vocab_size=257, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ffn=512,
           seq_len=128, rope_theta=10000.0, norm_eps=1e-5, is_moe=1, num_experts=8,
           num_active_experts=2, num_shared_experts=1, d_expert=128, first_k_dense=1,
           renormalize_topk=0, capacity_factor=0.0, aux_loss_coef=0.01, z_loss_coef=0.001)
MICRO, ACCUM = 16, 4            # 4 x 16 x 128 = 8192 tokens per optimizer step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "0") or 0))
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(1234)
    model = ref.Model(CFG).float()
    with torch.no_grad():
        for name, p in ref.named_doc_parameters(model).items():
            if ref.is_norm_weight(name):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    params = list(ref.named_doc_parameters(model).values())
    opt = ref.make_adamw(model, 3e-3, 0.9, 0.95, 1e-8, 0.1)
    T = CFG["seq_len"]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (MICRO, T + 1), generator=g) for _ in range(ACCUM)]

    def step():
        opt.zero_grad(set_to_none=False)
        for b in batches:
            loss = model(b[:, :-1], b[:, 1:])["loss"] / ACCUM
            loss.backward()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t0
    tps = a.steps * ACCUM * MICRO * T / dt
    print("BENCH_TORCH tokens_per_s=%.1f steps=%d threads=%d torch=%s"
          % (tps, a.steps, torch.get_num_threads(), torch.__version__))


if __name__ == "__main__":
    main()
