#!/usr/bin/python3
"""Write a small random IN.h5 for tests/reference/torch_reference.py.

    /usr/bin/python3 tests/reference/make_random_case.py OUT.h5 [--moe|--dense]
        [--dtype float32|float64] [--steps N] [--seed S] [--capacity-factor C]
        [--renormalize-topk 0|1] [--aux-loss-coef A] [--z-loss-coef Z]
        [--sigmoid-scores 0|1] [--route-scale R] [--balance-scope 0|1|2]
        [--bias-balancing 0|1] [--bias-update-rate U] [--micro-batches M]

Default shapes: V=37, C=16, nh=4, nkv=2, T=8, B=2, F=24, E=4, k=2, Es=1,
De=8, first_k_dense=1, n_layers=2.  Weights ~ Normal(0, init_std), norm
weights 1 + Normal(0, 0.1) (not exactly 1, so that their gradients matter).
"""

import argparse
import sys

import numpy as np

import torch_reference as ref


def default_config(moe=True, dtype="float64", steps=0):
    return dict(
        vocab_size=37, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=24,
        seq_len=8, rope_theta=10000.0, norm_eps=1e-5, is_moe=int(moe),
        num_experts=4, num_active_experts=2, num_shared_experts=1, d_expert=8,
        first_k_dense=1, renormalize_topk=1, capacity_factor=0.0,
        aux_loss_coef=0.01, z_loss_coef=0.001, dtype=dtype,
        steps=steps, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
        grad_clip=1.0,
    )


def random_params(cfg, rng, init_std=0.2):
    """{name: float64 array} with the shapes doc/model.md lists."""
    model = ref.Model(cfg)
    out = {}
    for name, p in ref.named_doc_parameters(model).items():
        shape = tuple(p.shape)
        if ref.is_norm_weight(name):
            out[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            out[name] = init_std * rng.standard_normal(shape)
    return out


def random_batch(cfg, rng, batch=2):
    V, T = cfg["vocab_size"], cfg["seq_len"]
    inputs = rng.integers(0, V, size=(batch, T)).astype(np.int32)
    targets = rng.integers(0, V, size=(batch, T)).astype(np.int32)
    return inputs, targets


def write_case(path, cfg, params, inputs, targets):
    import h5py
    with h5py.File(path, "w") as f:
        c = f.create_group("config")
        for key in ref.CONFIG_INT_KEYS + ref.TRAIN_INT_KEYS:
            c.attrs[key] = np.int64(cfg[key])
        for key in ref.CONFIG_FLOAT_KEYS + ref.TRAIN_FLOAT_KEYS:
            c.attrs[key] = np.float64(cfg[key])
        for key in ref.ROUTING_INT_KEYS:
            if key in cfg:
                c.attrs[key] = np.int64(cfg[key])
        for key in ref.ROUTING_FLOAT_KEYS:
            if key in cfg:
                c.attrs[key] = np.float64(cfg[key])
        c.attrs["dtype"] = cfg["dtype"]
        p = f.create_group("params")
        for name, arr in params.items():
            p.create_dataset(name, data=np.asarray(arr, dtype=np.float64))
        b = f.create_group("batch")
        b.create_dataset("inputs", data=np.asarray(inputs, dtype=np.int32))
        b.create_dataset("targets", data=np.asarray(targets, dtype=np.int32))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--moe", dest="moe", action="store_true", default=True)
    g.add_argument("--dense", dest="moe", action="store_false")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.2)
    ap.add_argument("--capacity-factor", type=float, default=0.0)
    ap.add_argument("--renormalize-topk", type=int, choices=[0, 1], default=1)
    ap.add_argument("--aux-loss-coef", type=float, default=0.01)
    ap.add_argument("--z-loss-coef", type=float, default=0.001)
    ap.add_argument("--sigmoid-scores", type=int, choices=[0, 1], default=0)
    ap.add_argument("--route-scale", type=float, default=1.0)
    ap.add_argument("--balance-scope", type=int, choices=[0, 1, 2], default=0)
    ap.add_argument("--bias-balancing", type=int, choices=[0, 1], default=0)
    ap.add_argument("--bias-update-rate", type=float, default=1e-3)
    ap.add_argument("--micro-batches", type=int, default=1)
    a = ap.parse_args(argv[1:])
    cfg = default_config(a.moe, a.dtype, a.steps)
    cfg.update(capacity_factor=a.capacity_factor, renormalize_topk=a.renormalize_topk,
               aux_loss_coef=a.aux_loss_coef, z_loss_coef=a.z_loss_coef,
               sigmoid_scores=a.sigmoid_scores, route_scale=a.route_scale,
               balance_scope=a.balance_scope, bias_balancing=a.bias_balancing,
               bias_update_rate=a.bias_update_rate, micro_batches=a.micro_batches)
    rng = np.random.default_rng(a.seed)
    params = random_params(cfg, rng, a.init_std)
    inputs, targets = random_batch(cfg, rng, a.batch)
    write_case(a.out, cfg, params, inputs, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
