#!/usr/bin/env python3
"""--describe's memory estimate against the memory a run really allocates.

For each model below, `fulcrum-train DECK --describe` prints
memory_estimate_bytes (model_memory.hpp: the buffers one rank allocates,
from the deck alone) and a short run of the same deck records the measured
peak of its Kokkos allocations in /summary/peak_kokkos_bytes (and on the
summary line). With one rank (local dispatcher) the two must agree within 2%:
the estimate counts the same buffers. With expert parallelism the estimate
assumes balanced routing while a young router sends more tokens to some
ranks, so the measured peak may exceed it, by at most 50% (the receive
buffers grow from the exchanged counts, never to the worst case).

  memory_estimate_test.py --train BIN --source-dir DIR [--mpiexec BIN]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import h5py

# name, deck, --set overrides, ranks, allowed ratio measured / estimate
SHORT = ["train.tokens=16384", "train.eval_interval=100000", "train.eval_tokens=2048", "train.log_interval=1"]
CASES = [
    ("dense", "dense-quickstart.toml", [], 1, (0.98, 1.02)),
    ("moe_quickstart", "quickstart.toml", [], 1, (0.98, 1.02)),
    ("moe_sigmoid_shared", "quickstart.toml", ["moe.score_function=\"sigmoid\"", "moe.num_shared_experts=2",
                            "moe.bias_balancing=true", "moe.aux_loss_coef=0"], 1, (0.98, 1.02)),
    # T x T probabilities of 64 MiB per layer: the flash kernel (attention_kernel.hpp)
    ("moe_flash_attention", "quickstart.toml", ["model.seq_len=1024", "train.micro_batch_size=4", "train.batch_tokens=4096",
                             "train.tokens=8192"], 1, (0.98, 1.02)),
    ("moe_ep2", "quickstart.toml", ["parallel.expert_parallel=2", "parallel.dispatcher=\"mpi_alltoall\""], 2, (0.98, 1.5)),
]


def describe(args, deck, sets):
    cmd = [args.train, deck, "--describe"] + [a for s in sets for a in ("--set", s)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=args.source_dir).stdout
    kv = dict(re.findall(r"^(\S+) = (.*)$", out, re.M))
    return kv


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True, type=os.path.abspath)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--mpiexec")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.source_dir, "data", "default", "train.tok")):
        print("data/default missing (scripts/prepare-default-data.sh)")
        return 77
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        for name, deck_name, sets, ranks, (lo, hi) in CASES:
            deck = os.path.join(args.source_dir, "input_decks", deck_name)
            if ranks > 1 and not args.mpiexec:
                print(f"{name}: skipped (no mpiexec)")
                continue
            sets = SHORT + sets
            kv = describe(args, deck, sets)
            estimate = float(kv["memory_estimate_bytes"])
            out = os.path.join(work, name)
            cmd = [args.train, deck, "--quiet", "--set", f"output.dir={out}", "--set", f"run.name={name}"]
            cmd += [a for s in sets for a in ("--set", s)]
            if ranks > 1:
                cmd = [args.mpiexec, "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
            # the decks' data paths are relative to the source tree
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=args.source_dir)
            if r.returncode != 0:
                print(f"{name}: run failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
                failures += 1
                continue
            summary = [l for l in r.stdout.splitlines() if l.startswith("FULCRUM_SUMMARY")]
            if not summary or "peak_kokkos_mib=" not in summary[0]:
                print(f"{name}: summary line without peak_kokkos_mib: {summary}")
                failures += 1
                continue
            files = [f for f in os.listdir(out) if f.endswith(".h5") and "checkpoint" not in f]
            with h5py.File(os.path.join(out, files[0]), "r") as f:
                measured = float(f["summary"].attrs["peak_kokkos_bytes"])
            ratio = measured / estimate
            ok = lo <= ratio <= hi
            print(f"{name}: attention={kv['attention_kernel']} estimate={estimate / 2**20:.2f} MiB "
                  f"measured={measured / 2**20:.2f} MiB ratio={ratio:.4f} (allowed [{lo}, {hi}]) {'ok' if ok else 'FAIL'}")
            failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
