#!/usr/bin/python3
"""Multi-rank fulcrum-train runs (issue: MPI expert + data parallelism).

* a 20-step loss trajectory at (W=2, EP=2), (W=4, EP=2) and (W=4, EP=4)
  agrees with W=1 (same tokens in the same order; float round-off only);
* bad parallel configurations are refused before training on every rank with
  exit code 2, a clear message naming the deck key, no output written, no hang.
Environment: FULCRUM_TRAIN (binary), FULCRUM_SOURCE_DIR (repository root).
"""
import os
import shutil
import subprocess
import tempfile
import unittest

os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
import h5py  # noqa: E402
import numpy as np  # noqa: E402

TRAIN = os.environ.get("FULCRUM_TRAIN", "build/src/apps/fulcrum-train")
ROOT = os.environ.get("FULCRUM_SOURCE_DIR", os.getcwd())
DECK = os.path.join(ROOT, "tests/checkpoint/tiny.toml")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def run(out_dir, ranks, ep, extra=()):
    cmd = ["mpiexec", "-n", str(ranks), "--oversubscribe", "--allow-run-as-root", TRAIN, DECK, "--quiet",
           "--set", "data.train=" + os.path.join(ROOT, "data/default/train.tok"),
           "--set", "data.valid=" + os.path.join(ROOT, "data/default/valid.tok"),
           "--set", "train.tokens=40960",  # 20 steps
           "--set", "train.checkpoint_interval=0",
           "--set", "output.dir=" + out_dir,
           "--set", "parallel.expert_parallel=%d" % ep,
           "--set", "parallel.dispatcher=" + ("local" if ep == 1 else "mpi_alltoall")] + list(extra)
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240, cwd=ROOT)


class ParallelCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for name in ("train.tok", "valid.tok"):
            if not os.path.exists(os.path.join(ROOT, "data/default", name)):
                raise AssertionError("data/default missing: run scripts/prepare-default-data.sh")
        cls.tmp = tempfile.mkdtemp(prefix="fulcrum-par-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def losses(self, ranks, ep):
        d = os.path.join(self.tmp, "w%d-ep%d" % (ranks, ep))
        p = run(d, ranks, ep)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-2000:])
        self.assertEqual(p.stdout.count("FULCRUM_SUMMARY"), 1, "one summary line from rank 0 only")
        with h5py.File(os.path.join(d, "run.h5"), "r") as f:
            self.assertEqual(f.attrs["world_size"], ranks)
            return f["train/loss"][()], f["train/grad_norm"][()]

    def test_trajectory_agrees_with_one_rank(self):
        ref_loss, ref_norm = self.losses(1, 1)
        self.assertEqual(len(ref_loss), 20)
        for ranks, ep in [(2, 2), (4, 2), (4, 4)]:
            loss, norm = self.losses(ranks, ep)
            err = np.max(np.abs(loss - ref_loss) / ref_loss)
            print("  W=%d EP=%d: 20-step loss max relative difference vs W=1: %.2e" % (ranks, ep, err))
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, err_msg="W=%d EP=%d" % (ranks, ep))
            np.testing.assert_allclose(norm, ref_norm, rtol=1e-3, err_msg="grad norm W=%d EP=%d" % (ranks, ep))

    def refused(self, ranks, ep, extra, key, text):
        d = os.path.join(self.tmp, "bad-%s" % key.replace(".", "-"))
        p = run(d, ranks, ep, extra)
        self.assertEqual(p.returncode, 2, p.stdout[-1000:] + p.stderr[-1000:])
        self.assertIn(key.split(".")[1], p.stderr)
        self.assertIn(text, p.stderr)
        self.assertFalse(os.path.exists(d), "nothing may be written for bad input")

    def test_ep_not_dividing_world(self):
        self.refused(3, 2, [], "parallel.expert_parallel", "does not divide the 3 launched ranks")

    def test_experts_not_divisible_by_ep(self):
        # tiny.toml has 4 experts; EP = 3 cannot shard them
        self.refused(3, 3, [], "parallel.expert_parallel", "num_experts")

    def test_world_size_not_matching_launch(self):
        self.refused(2, 1, ["--set", "parallel.world_size=4"], "parallel.world_size",
                     "launched with 2 ranks")

    def test_local_dispatcher_needs_ep_1(self):
        p = run(os.path.join(self.tmp, "bad-dispatcher"), 2, 2, ["--set", "parallel.dispatcher=local"])
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("dispatcher", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
