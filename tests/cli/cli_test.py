#!/usr/bin/python3
"""End-to-end tests of the fulcrum-train command line (tests/cli/CMakeLists.txt).

    /usr/bin/python3 cli_test.py CASE --train BIN --source-dir DIR --work DIR [--mpiexec MPIEXEC]

CASE is one of
  e2e         short quickstart run through mpiexec -n 1: completes, one summary
              line, /eval/val_loss falls by more than 0.5 nats, /config complete
  exit_codes  bad flag / missing data / vocab mismatch / existing run file -> 2
              with nothing written; forced divergence -> 3, status "diverged"
  describe    --describe on the paper decks: parameter counts and A
  killed      kill -9 after the first flushes: the file reads, status "running"
  replay      a run repeated from its run file is bit-identical
  precision   train.precision: bf16 and fp32 runs of the quickstart end within 1%
              of each other, bf16 runs are bit-identical, the run file records
              what was used; with DNNL_MAX_CPU_ISA=AVX512_CORE (no native bf16)
              precision = "bf16" is refused (exit 2) and "auto" resolves to fp32

Needs /usr/bin/python3 with h5py (python3-h5py, scripts/install-deps.sh) and
the default data in <source>/data/default (scripts/prepare-default-data.sh).
Prints one "ok ..." line per check; exits 1 on the first failed check.
"""

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py

QUICK = None          # set in main: absolute path of input_decks/quickstart.toml
ARGS = None


class Failure(Exception):
    pass


def check(cond, what, detail=""):
    if not cond:
        raise Failure(what + (": " + detail if detail else ""))
    print("ok   " + what + (" (" + detail + ")" if detail else ""))


def s(value):
    """TOML string literal for --set."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def data_sets():
    data = os.path.join(ARGS.source_dir, "data", "default")
    train, valid = os.path.join(data, "train.tok"), os.path.join(data, "valid.tok")
    for f in (train, valid):
        if not os.path.isfile(f):
            raise Failure("default data missing: %s (run scripts/prepare-default-data.sh "
                          "BUILD/src/apps/fulcrum-data, or scripts/run-tests.sh, which does)" % f)
    return ["--set", "data.train=" + s(train), "--set", "data.valid=" + s(valid)]


def fresh_dir(name):
    d = os.path.join(ARGS.work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def run(cmd, cwd, timeout=600, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    t0 = time.time()
    p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout, env=env)
    print("$ %s\n  -> exit %d after %.1f s" % (" ".join(cmd), p.returncode, time.time() - t0))
    return p


def attr_str(v):
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def summary_lines(stdout):
    return [l for l in stdout.splitlines() if l.startswith("FULCRUM_SUMMARY")]


# ---------------------------------------------------------------------------

def case_e2e():
    d = fresh_dir("e2e")
    out = os.path.join(d, "out")
    cmd = []
    if ARGS.mpiexec:
        cmd = [ARGS.mpiexec, "-n", "1", "--allow-run-as-root", "--oversubscribe"]
    cmd += [ARGS.train, QUICK] + data_sets() + [
        "--set", "run.name=" + s("e2e"),
        "--set", "train.tokens=163840",       # 20 steps of 8192 tokens
        "--set", "train.eval_interval=10",
        "--set", "train.eval_tokens=32768",
        "--set", "train.log_interval=5",
        "--set", "output.dir=" + s(out)]
    p = run(cmd, cwd=d, timeout=900)
    sys.stdout.write(p.stdout[-3000:])
    sys.stderr.write(p.stderr[-3000:])
    check(p.returncode == 0, "e2e: exit code 0", "got %d" % p.returncode)
    lines = summary_lines(p.stdout)
    check(len(lines) == 1, "e2e: exactly one FULCRUM_SUMMARY line", "got %d" % len(lines))
    fields = dict(kv.split("=", 1) for kv in lines[0].split()[1:] if "=" in kv)
    for key in ("run", "status", "final_train_loss", "final_val_loss", "tokens_per_s",
                "model_flops_per_s"):
        check(key in fields, "e2e: summary has " + key)
    check(fields["status"] == "completed", "e2e: summary status=completed", fields["status"])
    check(fields["run"] == "e2e", "e2e: summary run=e2e", fields["run"])

    path = os.path.join(out, "run.h5")
    check(os.path.isfile(path), "e2e: run file exists", path)
    with h5py.File(path, "r") as f:
        check(attr_str(f.attrs["status"]) == "completed", "e2e: /status == completed",
              attr_str(f.attrs["status"]))
        val = [float(x) for x in f["eval/val_loss"][...]]
        check(len(val) >= 3, "e2e: at least 3 evaluations", str(len(val)))
        check(all(math.isfinite(v) for v in val), "e2e: val_loss finite")
        check(abs(val[0] - math.log(257)) < 0.3, "e2e: first val_loss near ln 257 = 5.55",
              "%.4f" % val[0])
        check(val[-1] < val[0] - 0.5, "e2e: last val_loss < first - 0.5",
              "first %.4f last %.4f" % (val[0], val[-1]))
        print("     val_loss curve: " + " ".join("%.4f" % v for v in val))
        cfg = f["config"].attrs
        for key in ("params_total", "params_active", "flops_per_token", "activation_ratio",
                    "granularity", "shared_ratio", "batch_tokens", "lr_peak", "tokens_target",
                    "compute_target", "d_model", "n_layers", "num_experts"):
            check(key in cfg, "e2e: /config has " + key)
        check(abs(float(cfg["activation_ratio"]) - 3.0 / 9.0) < 1e-9,
              "e2e: activation_ratio is (E_a+E_s)/(E+E_s) = 3/9", str(cfg["activation_ratio"]))
        check(int(cfg["tokens_target"]) == 163840, "e2e: tokens_target from --set",
              str(cfg["tokens_target"]))
        train = f["train"]
        names = ["step", "tokens", "flops", "loss", "lm_loss", "aux_loss", "z_loss", "lr",
                 "grad_norm", "tokens_per_second"]
        lens = {n: train[n].shape[0] for n in names if n in train}
        check(len(lens) == len(names), "e2e: /train has all datasets", str(sorted(lens)))
        check(len(set(lens.values())) == 1 and min(lens.values()) > 0,
              "e2e: /train datasets of equal non-zero length", str(lens))
        check(int(train["tokens"][-1]) == 163840, "e2e: 163840 tokens trained",
              str(train["tokens"][-1]))
        summ = f["summary"].attrs
        check(abs(float(summ["final_val_loss"]) - val[-1]) < 1e-9,
              "e2e: /summary final_val_loss == last val_loss")
        check("routing" in f and f["routing/expert_share"].shape[0] > 0,
              "e2e: /routing snapshots written (MoE)")


def expect_bad_input(name, extra, key, out_exists_ok=False):
    d = fresh_dir("exit_" + name.replace(" ", "_"))
    out = os.path.join(d, "out")
    p = run([ARGS.train, QUICK] + extra + ["--set", "output.dir=" + s(out),
                                           "--set", "train.tokens=16384"], cwd=d)
    check(p.returncode == 2, name + ": exit code 2", "got %d; stderr: %s" % (p.returncode, p.stderr.strip()))
    if key:
        # the deck reader names keys as "[section] key"; accept "section.key" too
        section, k = key.split(".", 1)
        named = key in p.stderr or ("[%s] %s" % (section, k)) in p.stderr
        check(named, name + ": stderr names " + key, p.stderr.strip())
    if not out_exists_ok:
        check(not os.path.exists(out), name + ": output dir not created")
    check(not summary_lines(p.stdout), name + ": no summary line")
    return d, out, p


def case_exit_codes():
    data = data_sets()
    # A bad command line.
    d = fresh_dir("exit_bad_flag")
    p = run([ARGS.train, QUICK, "--no-such-flag", "--set", "output.dir=" + s(os.path.join(d, "out"))], cwd=d)
    check(p.returncode == 2, "bad flag: exit code 2", "got %d" % p.returncode)
    check(not os.path.exists(os.path.join(d, "out")), "bad flag: output dir not created")
    check(os.listdir(d) == [], "bad flag: nothing written in the working directory")
    d = fresh_dir("exit_no_deck")
    p = run([ARGS.train, os.path.join(d, "missing.toml")], cwd=d)
    check(p.returncode == 2, "missing deck: exit code 2", "got %d" % p.returncode)

    # Missing data file.
    missing = os.path.join(ARGS.work, "no-such-dir", "train.tok")
    expect_bad_input("missing data", data + ["--set", "data.train=" + s(missing)], "data.train")
    # Vocabulary does not match the data.
    expect_bad_input("vocab mismatch", data + ["--set", "model.vocab_size=300"], "model.vocab_size")
    # Existing run file, no overwrite: refused, the file untouched.
    d = fresh_dir("exit_existing")
    out = os.path.join(d, "out")
    os.makedirs(out)
    sentinel = os.path.join(out, "run.h5")
    with open(sentinel, "w") as f:
        f.write("sentinel, not HDF5\n")
    p = run([ARGS.train, QUICK] + data + ["--set", "output.dir=" + s(out), "--set", "train.tokens=16384"],
            cwd=d)
    check(p.returncode == 2, "existing run file: exit code 2", "got %d; %s" % (p.returncode, p.stderr.strip()))
    check("output" in p.stderr and "overwrite" in p.stderr, "existing run file: stderr names output / overwrite",
          p.stderr.strip())
    with open(sentinel) as f:
        check(f.read() == "sentinel, not HDF5\n", "existing run file: left untouched")
    check(sorted(os.listdir(out)) == ["run.h5"], "existing run file: nothing else written")

    # Forced divergence: exit 3, status diverged, summary says so.
    d = fresh_dir("exit_diverged")
    out = os.path.join(d, "out")
    p = run([ARGS.train, QUICK] + data + [
        "--set", "output.dir=" + s(out), "--set", "train.tokens=163840",
        "--set", "train.lr=1.0", "--set", "train.warmup_fraction=0.0",
        "--set", "train.divergence_factor=1.01", "--set", "train.eval_tokens=8192"], cwd=d, timeout=600)
    sys.stdout.write(p.stdout[-2000:])
    check(p.returncode == 3, "divergence: exit code 3", "got %d; stderr: %s" % (p.returncode, p.stderr.strip()))
    lines = summary_lines(p.stdout)
    check(len(lines) == 1 and "status=diverged" in lines[0], "divergence: summary status=diverged",
          str(lines))
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        check(attr_str(f.attrs["status"]) == "diverged", "divergence: /status == diverged",
              attr_str(f.attrs["status"]))
        n = f["train/step"].shape[0]
        check(n >= 1, "divergence: rows up to the divergence kept", "%d rows" % n)
        check(int(f["train/step"][-1]) < int(f["config"].attrs["steps_total"]),
              "divergence: stopped before steps_total")


def describe(deck, cwd):
    p = run([ARGS.train, deck, "--describe"], cwd=cwd)
    check(p.returncode == 0, "describe %s: exit code 0" % os.path.basename(deck),
          "got %d; %s" % (p.returncode, p.stderr.strip()))
    kv = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", line)
        if m:
            kv[m.group(1)] = m.group(2)
    print("\n".join("     %s = %s" % x for x in kv.items()))
    for key in ("params_total", "params_active", "flops_per_token", "activation_ratio",
                "granularity", "shared_ratio"):
        check(key in kv, "describe %s: prints %s" % (os.path.basename(deck), key))
    return kv


def case_describe():
    d = fresh_dir("describe")
    paper = os.path.join(ARGS.source_dir, "input_decks", "paper")
    kv = describe(os.path.join(paper, "ling-mini-beta.toml"), d)
    pt = float(kv["params_total"])
    check(abs(pt / 17.5e9 - 1) < 0.01, "ling-mini-beta: params_total within 1% of 17.5e9", "%.4g" % pt)
    a = float(kv["activation_ratio"])
    check(abs(a - 13.0 / 385.0) < 1e-6 * 13.0 / 385.0 + 5e-7, "ling-mini-beta: activation_ratio == 13/385",
          "%s vs %.9f" % (kv["activation_ratio"], 13.0 / 385.0))
    kv = describe(os.path.join(paper, "dense-6.1b.toml"), d)
    pt = float(kv["params_total"])
    check(abs(pt / 6.11e9 - 1) < 0.01, "dense-6.1b: params_total within 1% of 6.11e9", "%.4g" % pt)
    check(os.listdir(d) == [], "describe: nothing written")


def case_killed():
    d = fresh_dir("killed")
    out = os.path.join(d, "out")
    cmd = [ARGS.train, QUICK] + data_sets() + [
        "--set", "output.dir=" + s(out), "--set", "train.tokens=3000000",
        "--set", "train.log_interval=1", "--set", "train.eval_tokens=4096",
        "--set", "train.eval_interval=1000"]
    print("$ " + " ".join(cmd))
    p = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True)
    # With log_interval 1 the file is flushed after every step; the progress
    # line of step 3 is printed after the flush of step 2.
    deadline = time.time() + 300
    seen = None
    try:
        for line in p.stdout:
            sys.stdout.write("  | " + line)
            m = re.match(r"^step (\d+)/", line)
            if m and int(m.group(1)) >= 3:
                seen = int(m.group(1))
                break
            if time.time() > deadline:
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    check(seen is not None, "killed: the run reached step 3 before the kill")
    check(p.returncode == -signal.SIGKILL, "killed: the process died of SIGKILL", str(p.returncode))
    path = os.path.join(out, "run.h5")
    h = subprocess.run(["h5dump", "-H", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    check(h.returncode == 0, "killed: h5dump -H reads the file", h.stderr.strip()[-500:])
    with h5py.File(path, "r") as f:
        check(attr_str(f.attrs["status"]) == "running", "killed: /status == running",
              attr_str(f.attrs["status"]))
        n = {k: f["train"][k].shape[0] for k in f["train"]}
        check(min(n.values()) >= 2 and len(set(n.values())) == 1,
              "killed: /train has >= 2 complete rows", str(n))
        loss = f["train/loss"][...]
        check(all(math.isfinite(float(x)) for x in loss), "killed: the rows read back finite")


def case_replay():
    """Every run is reproducible from its HDF5 file: fulcrum-train RUN.h5."""
    d = fresh_dir("replay")
    first, second = os.path.join(d, "first"), os.path.join(d, "second")
    p = run([ARGS.train, QUICK, "--quiet"] + data_sets() + [
        "--set", "train.tokens=24576", "--set", "train.log_interval=1", "--set", "train.eval_interval=2",
        "--set", "train.eval_tokens=8192", "--set", "run.seed=99", "--set", "output.dir=" + s(first)], cwd=d)
    check(p.returncode == 0, "replay: original run exit 0", p.stderr[-500:])
    rf = os.path.join(first, "run.h5")
    with h5py.File(rf, "r") as f:
        for key in ("deck", "seed", "version", "git_revision", "data_checksum"):
            check(key in f.attrs, "replay: run file stores " + key)
        check(int(f.attrs["seed"]) == 99, "replay: seed stored", str(f.attrs["seed"]))
    p = run([ARGS.train, rf, "--quiet", "--set", "output.dir=" + s(second)], cwd=d)
    check(p.returncode == 0, "replay: re-run from the run file exit 0", p.stderr[-500:])
    with h5py.File(rf, "r") as a, h5py.File(os.path.join(second, "run.h5"), "r") as b:
        for name in ("train/loss", "train/grad_norm", "eval/val_loss"):
            x, y = a[name][...], b[name][...]
            check(x.shape == y.shape and (x == y).all(), "replay: %s bit-identical" % name,
                  "%d rows" % x.shape[0])
        check(int(b.attrs["seed"]) == 99, "replay: seed carried over")
    bogus = os.path.join(d, "not-a-run.h5")
    with open(bogus, "w") as f:
        f.write("not hdf5")
    p = run([ARGS.train, bogus, "--set", "output.dir=" + s(os.path.join(d, "third"))], cwd=d)
    check(p.returncode == 2 and "not-a-run.h5" in p.stderr, "replay: a file that is not a run file -> exit 2",
          p.stderr.strip())
    check(not os.path.exists(os.path.join(d, "third")), "replay: nothing written for bad input")


def case_precision():
    d = fresh_dir("precision")
    no_bf16 = {"DNNL_MAX_CPU_ISA": "AVX512_CORE"}  # oneDNN then sees AVX-512 without BF16
    p = run([ARGS.train, QUICK, "--describe", "--set", "train.precision=" + s("bf16"),
             "--set", "train.gemm_backend=" + s("onednn")], cwd=d, env_extra=no_bf16)
    check(p.returncode == 2, "precision: bf16 without native bf16 -> exit 2", "got %d" % p.returncode)
    check("train.precision" in p.stderr.replace("[train] precision", "train.precision")
          and "no native bf16" in p.stderr and "AVX512-BF16" in p.stderr,
          "precision: the message names the key and what is missing", p.stderr.strip())
    kv = describe(QUICK, d)
    native = kv.get("precision") == "bf16"
    p = run([ARGS.train, QUICK, "--describe"], cwd=d, env_extra=no_bf16)
    check(p.returncode == 0 and "precision = fp32" in p.stdout,
          "precision: auto resolves to fp32 without native bf16", p.stdout[-300:] + p.stderr[-300:])
    if not native:
        print("note: this machine has no native bf16 (cpu_isa %s); bf16 training checks skipped"
              % kv.get("cpu_isa"))
        return
    common = [ARGS.train, QUICK, "--quiet"] + data_sets() + [
        "--set", "train.tokens=163840", "--set", "train.log_interval=5", "--set", "train.eval_interval=10",
        "--set", "train.eval_tokens=16384"]
    final = {}
    for name, prec in (("bf16", "bf16"), ("bf16-again", "bf16"), ("fp32", "fp32")):
        out = os.path.join(d, name)
        p = run(common + ["--set", "train.precision=" + s(prec), "--set", "output.dir=" + s(out)], cwd=d)
        check(p.returncode == 0, "precision: %s run exit 0" % name, p.stderr[-500:])
        with h5py.File(os.path.join(out, "run.h5"), "r") as f:
            check(attr_str(f.attrs["precision"]) == prec, "precision: run file records precision " + prec)
            check(attr_str(f.attrs["gemm_backend"]) == "onednn", "precision: run file records backend onednn")
            impl = attr_str(f.attrs["gemm_implementation"])
            check(("bf16" in impl) == (prec == "bf16"), "precision: implementation matches", impl)
            final[name] = (f["train/loss"][...], f["eval/val_loss"][...])
    a, b = final["bf16"], final["bf16-again"]
    check((a[0] == b[0]).all() and (a[1] == b[1]).all(), "precision: two bf16 runs bit-identical",
          "%d loss rows" % a[0].shape[0])
    vb, vf = float(final["bf16"][1][-1]), float(final["fp32"][1][-1])
    check(abs(vb - vf) < 0.01 * vf, "precision: bf16 final val_loss within 1% of fp32",
          "bf16 %.5f fp32 %.5f (%.3f%%)" % (vb, vf, 100 * (vb - vf) / vf))
    check(final["bf16"][1][-1] < final["bf16"][1][0] - 0.5, "precision: the bf16 run learns")


def main():
    global ARGS, QUICK
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["e2e", "exit_codes", "describe", "killed", "replay", "precision"])
    ap.add_argument("--train", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--mpiexec", default="")
    ARGS = ap.parse_args()
    ARGS.train = os.path.abspath(ARGS.train)
    ARGS.source_dir = os.path.abspath(ARGS.source_dir)
    ARGS.work = os.path.abspath(ARGS.work)
    QUICK = os.path.join(ARGS.source_dir, "input_decks", "quickstart.toml")
    os.makedirs(ARGS.work, exist_ok=True)
    try:
        {"e2e": case_e2e, "exit_codes": case_exit_codes, "describe": case_describe,
         "killed": case_killed, "replay": case_replay, "precision": case_precision}[ARGS.case]()
    except Failure as e:
        print("FAIL " + str(e))
        return 1
    print("all %s checks passed" % ARGS.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
