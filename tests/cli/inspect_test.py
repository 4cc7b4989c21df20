#!/usr/bin/python3
"""fulcrum-inspect on a short MoE run with bias balancing: the summary names
the routing diagnostics (max violation, min load, top-k margin, tokens per
expert, the bias), the PNG plots are written (loss, lr, one expert-load
heatmap per MoE layer) when the build has plplot, and a missing file exits 1.

    inspect_test.py --train FULCRUM_TRAIN --inspect FULCRUM_INSPECT --source-dir DIR
"""
import argparse
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--inspect", required=True)
    ap.add_argument("--source-dir", required=True)
    a = ap.parse_args()
    data = os.path.join(a.source_dir, "data/default")
    if not os.path.exists(os.path.join(data, "train.tok")):
        print("data/default missing: run scripts/prepare-default-data.sh")
        return 77  # skipped
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    failures = []
    with tempfile.TemporaryDirectory(prefix="fulcrum-inspect-") as tmp:
        out = os.path.join(tmp, "run")
        subprocess.run([a.train, os.path.join(a.source_dir, "tests/checkpoint/tiny.toml"),
                        "--set", "data.train=" + os.path.join(data, "train.tok"),
                        "--set", "data.valid=" + os.path.join(data, "valid.tok"),
                        "--set", "output.dir=" + out, "--set", "train.tokens=20480",
                        "--set", 'moe.score_function="sigmoid"', "--set", "moe.bias_balancing=true",
                        "--set", "moe.aux_loss_coef=0"], env=env, check=True, capture_output=True)
        p = subprocess.run([a.inspect, os.path.join(out, "run.h5"), "--plots", os.path.join(tmp, "plots")],
                           env=env, capture_output=True, text=True)
        print(p.stdout + p.stderr)
        if p.returncode != 0:
            failures.append("exit %d" % p.returncode)
        for text in ("status completed", "score_function       sigmoid", "bias_balancing       1",
                     "max violation", "min load", "top-k margin", "tokens per expert:", "bias:"):
            if text not in p.stdout:
                failures.append("summary lacks '%s'" % text)
        if "no plplot" not in p.stdout:
            for png in ("loss.png", "lr.png", "expert_load_layer1.png"):
                f = os.path.join(tmp, "plots", png)
                if not os.path.exists(f) or open(f, "rb").read(8) != b"\x89PNG\r\n\x1a\n":
                    failures.append("no PNG " + png)
        q = subprocess.run([a.inspect, os.path.join(tmp, "missing.h5"), "--no-plots"], capture_output=True, text=True)
        if q.returncode != 1 or "missing.h5" not in q.stderr:
            failures.append("missing file: exit %d, stderr %r" % (q.returncode, q.stderr))
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
