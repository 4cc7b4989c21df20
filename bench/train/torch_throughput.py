#!/usr/bin/python3
"""PyTorch training throughput of a Fulcrum deck's model (bench/train/throughput.sh).

    /usr/bin/python3 torch_throughput.py DECK [--steps 4] [--warmup 1] [--threads N] [--autocast]

Reads the model and batch keys of DECK (a fulcrum-train input deck, TOML;
defaults as doc/input-decks.md), builds the model of
tests/reference/torch_reference.py (the same model as fulcrum-train,
doc/model.md) in float32, and times full optimizer steps of the deck's global
batch (batch_tokens = accumulation x micro_batch_size x seq_len): forward +
backward per micro-batch, global-norm clipping at 1.0, torch.optim.AdamW.
With --autocast, forward and backward run under
torch.autocast("cpu", dtype=torch.bfloat16) (fp32 master weights, as
Fulcrum's precision = "bf16"). Tokens are uniform random ids (throughput only).
Prints one line:
  BENCH_TORCH tokens_per_s=... steps=... threads=... precision=fp32|bf16_autocast torch=...
"""
import argparse
import os
import sys
import time
import tomllib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import torch_reference as ref  # noqa: E402


def config_from_deck(path):
    with open(path, "rb") as f:
        deck = tomllib.load(f)
    m, e, t = deck.get("model", {}), deck.get("moe", None), deck.get("train", {})
    cfg = dict(vocab_size=m.get("vocab_size", 257), d_model=m.get("d_model", 256),
               n_layers=m.get("n_layers", 4), n_heads=m.get("n_heads", 4),
               n_kv_heads=m.get("n_kv_heads", 4), d_ffn=m.get("d_ffn", 1024),
               seq_len=m.get("seq_len", 256), rope_theta=m.get("rope_theta", 10000.0),
               norm_eps=m.get("norm_eps", 1e-5), is_moe=0, num_experts=0, num_active_experts=0,
               num_shared_experts=0, d_expert=0, first_k_dense=0, renormalize_topk=0,
               capacity_factor=0.0, aux_loss_coef=0.01, z_loss_coef=0.001)
    if e is not None:
        cfg.update(is_moe=1, num_experts=e["num_experts"], num_active_experts=e["num_active_experts"],
                   num_shared_experts=e.get("num_shared_experts", 0), d_expert=e["d_expert"],
                   first_k_dense=e.get("first_k_dense", 0),
                   renormalize_topk=int(e.get("renormalize_topk", False)),
                   capacity_factor=e.get("capacity_factor", 0.0),
                   aux_loss_coef=e.get("aux_loss_coef", 0.01), z_loss_coef=e.get("z_loss_coef", 0.001))
    micro = t.get("micro_batch_size", 4)
    accum = t.get("batch_tokens", 8192) // (micro * cfg["seq_len"])
    return cfg, micro, max(1, accum), t.get("lr", 1e-3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("deck")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "0") or 0))
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (CPU)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cfg, micro, accum, lr = config_from_deck(a.deck)
    torch.manual_seed(1234)
    model = ref.Model(cfg).float()
    with torch.no_grad():
        for name, p in ref.named_doc_parameters(model).items():
            if ref.is_norm_weight(name):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    params = list(ref.named_doc_parameters(model).values())
    opt = ref.make_adamw(model, lr, 0.9, 0.95, 1e-8, 0.1)
    T = cfg["seq_len"]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg["vocab_size"] - 1, (micro, T + 1), generator=g) for _ in range(accum)]

    def step():
        opt.zero_grad(set_to_none=False)
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast):
                loss = model(b[:, :-1], b[:, 1:])["loss"] / accum
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
    tps = a.steps * accum * micro * T / dt
    print("BENCH_TORCH tokens_per_s=%.1f steps=%d threads=%d precision=%s torch=%s"
          % (tps, a.steps, torch.get_num_threads(), "bf16_autocast" if a.autocast else "fp32",
             torch.__version__))


if __name__ == "__main__":
    main()
