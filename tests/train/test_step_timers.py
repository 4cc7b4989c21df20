#!/usr/bin/env python3
"""The step loop's fenced per-phase timers in the run file and on the summary
line: /timers holds data, forward, backward, exchange, optimizer, eval and io
(seconds and calls), the phases of the timed steps add up to the step time,
forward and backward dominate, and the FULCRUM_SUMMARY line carries the same
breakdown. Then the train rows, read from device memory only at log steps,
are complete: one per step, with log_interval larger than 1."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import h5py

ROOT = os.environ.get("FULCRUM_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TRAIN = os.environ.get("FULCRUM_TRAIN", os.path.join(ROOT, "build", "src", "apps", "fulcrum-train"))
PHASES = ["data", "forward", "backward", "exchange", "optimizer"]


def run(out, ranks, extra=()):
    cmd = ["mpiexec", "-n", str(ranks), "--oversubscribe", "--allow-run-as-root", TRAIN,
           os.path.join(ROOT, "tests/checkpoint/tiny.toml"), "--quiet",
           "--set", "train.tokens=24576", "--set", "train.log_interval=5",
           "--set", "train.checkpoint_interval=0", "--set", "train.eval_interval=6",
           "--set", 'output.dir="%s"' % out] + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=300)


class StepTimers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fulcrum-timers-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check_run(self, ranks):
        out = os.path.join(self.tmp, "w%d" % ranks)
        p = run(out, ranks)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-2000:])
        with h5py.File(os.path.join(out, "run.h5"), "r") as f:
            t = dict(f["timers"].attrs)
            wall = float(f["summary"].attrs["wall_time_s"])
            steps = int(f["summary"].attrs["steps_completed"])
            self.assertEqual(steps, 12)
            # every step has its row (rows are read from the device at log steps 5, 10, 12)
            self.assertEqual(list(f["train/step"][()]), list(range(1, 13)))
            for name in PHASES + ["step", "eval", "io"]:
                self.assertIn(name + ".seconds", t, name)
                self.assertIn(name + ".calls", t, name)
                self.assertGreaterEqual(t[name + ".seconds"], 0.0, name)
            for name in PHASES:  # host build: every step is timed
                self.assertEqual(t[name + ".calls"], steps, name)
            self.assertEqual(t["eval.calls"], 3)  # step 0, step 6, the end
            phases = sum(t[n + ".seconds"] for n in PHASES)
            step = t["step.seconds"]
            print("  W=%d: step %.3f s, phases %.3f s (%s)" % (
                ranks, step, phases, ", ".join("%s %.3f" % (n, t[n + ".seconds"]) for n in PHASES)))
            # the step timer is its own clock from the step's start to its
            # end: the phases cover it but for the bookkeeping between them
            self.assertLessEqual(phases, step * (1 + 1e-9))
            self.assertGreater(phases, 0.9 * step)
            self.assertLess(step + t["eval.seconds"] + t["io.seconds"], wall)
            self.assertGreater(t["forward.seconds"] + t["backward.seconds"], 0.5 * step)
            if ranks > 1:
                self.assertGreater(t["exchange.seconds"], 0.0)
        line = [l for l in p.stdout.splitlines() if l.startswith("FULCRUM_SUMMARY")]
        self.assertEqual(len(line), 1)
        fields = dict(re.findall(r"(\w+)=(\S+)", line[0]))
        for name in PHASES + ["step", "eval", "io"]:
            self.assertIn(name + "_s", fields, line[0])
        self.assertAlmostEqual(float(fields["forward_s"]), t["forward.seconds"], delta=0.006)

    def test_one_rank(self):
        self.check_run(1)

    def test_two_ranks(self):
        self.check_run(2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
