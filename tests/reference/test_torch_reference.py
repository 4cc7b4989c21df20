#!/usr/bin/python3
"""Self-checks of tests/reference/torch_reference.py (plain unittest).

    /usr/bin/python3 tests/reference/test_torch_reference.py

1. float64 gradients of the full loss agree with central finite differences
   (eps 1e-6) for random entries of every parameter (relative error < 1e-5);
2. the MoE layer equals a naive per-token loop over experts (routing, ties,
   renormalisation, capacity dropping, shared experts, aux and z losses);
3. an MoE with one expert, top-1, no shared expert equals the dense SwiGLU of
   the same width (layer and whole model);
plus: attention/RoPE against naive loops, AdamW trajectory against the
optimiser formula of doc/model.md, and the IN.h5 -> OUT.h5 command line.
"""

import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch_reference as ref          # noqa: E402
import make_random_case as mrc         # noqa: E402

torch.set_num_threads(1)
D = torch.float64


def case(seed=0, moe=True, **overrides):
    cfg = mrc.default_config(moe=moe)
    cfg.update(overrides)
    rng = np.random.default_rng(seed)
    params = mrc.random_params(cfg, rng)
    inputs, targets = mrc.random_batch(cfg, rng)
    return cfg, params, torch.as_tensor(inputs.astype(np.int64)), \
        torch.as_tensor(targets.astype(np.int64))


class FiniteDifferenceTest(unittest.TestCase):
    """Gradient of `loss` (lm + aux + z) vs central differences, in float64."""

    FD_EPS = 1e-6
    RTOL = 1e-5
    # Central differences carry ~5e-10 of round-off (1e-16 * loss / 1e-6), so a
    # purely relative test is meaningless for tiny gradients: the relative
    # error is |fd - an| / max(|fd|, |an|, GRAD_FLOOR), i.e. relative 1e-5 for
    # |grad| >= 1e-3 and absolute 1e-8 below that (zero gradients included).
    GRAD_FLOOR = 1e-3
    PER_PARAM = 4

    def check(self, cfg, params, inputs, targets, seed, loss_key="loss"):
        model = ref.build_model(cfg, params, D)
        named = ref.named_doc_parameters(model)
        model(inputs, targets)[loss_key].backward()
        gen = torch.Generator().manual_seed(seed)
        used_tokens = sorted(set(inputs.reshape(-1).tolist()))
        checked = 0
        worst = 0.0
        for name, p in named.items():
            grad = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            flat, gflat = p.data.view(-1), grad.view(-1)
            for _ in range(self.PER_PARAM):
                if name == "wte":    # only rows of tokens in the batch have a gradient
                    row = used_tokens[int(torch.randint(len(used_tokens), (1,), generator=gen))]
                    i = row * p.shape[1] + int(torch.randint(p.shape[1], (1,), generator=gen))
                else:
                    i = int(torch.randint(flat.numel(), (1,), generator=gen))
                orig = flat[i].item()
                with torch.no_grad():
                    flat[i] = orig + self.FD_EPS
                    lp = model(inputs, targets)[loss_key].item()
                    flat[i] = orig - self.FD_EPS
                    lm = model(inputs, targets)[loss_key].item()
                    flat[i] = orig
                fd = (lp - lm) / (2 * self.FD_EPS)
                an = gflat[i].item()
                err = abs(fd - an) / max(abs(fd), abs(an), self.GRAD_FLOOR)
                worst = max(worst, err)
                self.assertLess(err, self.RTOL,
                                "%s[%d]: analytic %.12g vs finite difference %.12g"
                                % (name, i, an, fd))
                checked += 1
        self.assertEqual(checked, len(named) * self.PER_PARAM)
        return worst

    def test_moe_renormalized_with_capacity(self):
        cfg, params, x, y = case(1, moe=True, capacity_factor=1.0,
                                 aux_loss_coef=0.1, z_loss_coef=0.01)
        self.check(cfg, params, x, y, seed=1)

    def test_moe_plain_topk_no_shared(self):
        cfg, params, x, y = case(2, moe=True, renormalize_topk=0, num_shared_experts=0,
                                 first_k_dense=0, aux_loss_coef=0.1, z_loss_coef=0.01)
        self.check(cfg, params, x, y, seed=2)

    def test_moe_aux_and_z_alone(self):
        # Gradient of aux_loss (+ nothing else) and of z_loss separately.
        cfg, params, x, y = case(3, moe=True, aux_loss_coef=1.0, z_loss_coef=1.0,
                                 num_shared_experts=2)
        self.check(cfg, params, x, y, seed=3, loss_key="aux_loss")
        self.check(cfg, params, x, y, seed=4, loss_key="z_loss")

    def test_dense(self):
        cfg, params, x, y = case(5, moe=False)
        self.check(cfg, params, x, y, seed=5)


# --------------------------------------------------------------------------
# Naive MoE
# --------------------------------------------------------------------------

def naive_moe(moe, h):
    """Per-token loop, written directly from doc/model.md."""
    x = h.reshape(-1, h.shape[-1])
    N, E, k = x.shape[0], moe.num_experts, moe.k
    R = moe.router.weight
    cap = math.ceil(moe.capacity_factor * N * k / E) if moe.capacity_factor > 0 else None
    used = [0] * E                 # assignments each expert has taken so far
    counts = [0] * E               # top-k assignments before dropping
    P = torch.zeros(E, dtype=x.dtype)
    zsum = torch.zeros((), dtype=x.dtype)
    ys = []
    for t in range(N):
        logits = torch.stack([R[e] @ x[t] for e in range(E)])
        m = logits.max()
        ex = torch.exp(logits - m)
        p = ex / ex.sum()
        P = P + p / N
        zsum = zsum + (m + torch.log(ex.sum())) ** 2
        order = sorted(range(E), key=lambda e: (-p[e].item(), e))[:k]
        total = sum(p[e] for e in order)
        y = torch.zeros_like(x[t])
        for e in order:
            counts[e] += 1
            if cap is not None and used[e] >= cap:
                continue               # dropped
            used[e] += 1
            w = p[e] / total if moe.renormalize_topk else p[e]
            hid = F.silu(moe.experts_w1[e] @ x[t]) * (moe.experts_w3[e] @ x[t])
            y = y + w * (moe.experts_w2[e] @ hid)
        if moe.shared is not None:
            s = moe.shared
            y = y + s.w2.weight @ (F.silu(s.w1.weight @ x[t]) * (s.w3.weight @ x[t]))
        ys.append(y)
    f = torch.tensor(counts, dtype=x.dtype) / (N * k)
    aux = moe.aux_loss_coef * E * (f * P).sum()
    z = moe.z_loss_coef * zsum / N
    return torch.stack(ys).view(h.shape), aux, z, used, counts


def random_moe(seed, C=16, E=4, k=2, Es=1, De=8, renorm=1, cap=0.0, std=0.3):
    torch.manual_seed(seed)
    moe = ref.MoE(C, E, k, Es, De, renorm, cap, 0.01, 0.001).to(D)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, std)
    h = torch.randn(2, 8, C, dtype=D)
    return moe, h


class NaiveMoETest(unittest.TestCase):
    def compare(self, moe, h):
        y, aux, z = moe(h)
        y0, aux0, z0, used, counts = naive_moe(moe, h)
        torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(aux, aux0, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(z, z0, rtol=1e-12, atol=1e-14)
        return used, counts

    def test_configurations(self):
        seed = 0
        for renorm in (0, 1):
            for Es in (0, 1, 2):
                for cap in (0.0, 1.0, 0.5, 1.25):
                    for (E, k) in ((4, 2), (5, 3), (4, 1)):
                        seed += 1
                        with self.subTest(renorm=renorm, Es=Es, cap=cap, E=E, k=k):
                            self.compare(*random_moe(seed, E=E, k=k, Es=Es,
                                                     renorm=renorm, cap=cap))

    def test_capacity_drops_something(self):
        moe, h = random_moe(7, cap=0.5)
        used, counts = self.compare(moe, h)
        self.assertLess(sum(used), sum(counts))
        cap = math.ceil(0.5 * 16 * 2 / 4)
        self.assertTrue(all(u <= cap for u in used))
        # f_e counts the assignments before dropping: N*k of them.
        self.assertEqual(sum(counts), 16 * 2)

    def test_ties_go_to_lower_index(self):
        moe, h = random_moe(8, E=5, k=2, cap=0.5)
        with torch.no_grad():
            moe.router.weight.zero_()          # p = 1/E for every expert: all tied
        x = h.reshape(-1, h.shape[-1])
        _, _, idx, _, _ = moe.route(x)
        self.assertTrue(bool((idx == torch.tensor([0, 1])).all()))
        self.compare(moe, h)

    def test_topk_matches_torch_topk(self):
        p = torch.softmax(torch.randn(64, 6, dtype=D), dim=-1)
        v, i = ref.topk_lower_index_ties(p, 3)
        tv, ti = torch.topk(p, 3, dim=-1, sorted=True)
        self.assertTrue(torch.equal(v, tv) and torch.equal(i, ti))


# --------------------------------------------------------------------------
# One expert, top-1 == dense SwiGLU
# --------------------------------------------------------------------------

class SingleExpertTest(unittest.TestCase):
    def test_layer(self):
        torch.manual_seed(11)
        C, W = 16, 24
        dense = ref.SwiGLU(C, W).to(D)
        for renorm in (0, 1):
            moe = ref.MoE(C, 1, 1, 0, W, renorm, 0.0, 0.01, 0.001).to(D)
            with torch.no_grad():
                moe.router.weight.normal_()
                moe.experts_w1[0].copy_(dense.w1.weight)
                moe.experts_w3[0].copy_(dense.w3.weight)
                moe.experts_w2[0].copy_(dense.w2.weight)
            h = torch.randn(2, 8, C, dtype=D, requires_grad=True)
            y, aux, z = moe(h)
            yd = dense(h)
            torch.testing.assert_close(y, yd, rtol=1e-13, atol=1e-13)
            # p == 1 exactly, so aux = coef * 1 * 1 * 1; z = coef * mean(logit^2).
            self.assertEqual(float(aux), 0.01)
            g, = torch.autograd.grad(y.sum(), h)
            gd, = torch.autograd.grad(yd.sum(), h)
            torch.testing.assert_close(g, gd, rtol=1e-13, atol=1e-13)

    def test_whole_model(self):
        W = 24
        cfg, params, x, y = case(12, moe=False, d_ffn=W)
        mcfg = dict(cfg, is_moe=1, num_experts=1, num_active_experts=1,
                    num_shared_experts=0, d_expert=W, first_k_dense=0,
                    aux_loss_coef=0.0, z_loss_coef=0.0, capacity_factor=0.0)
        mparams = {}
        for name, v in params.items():
            stem, _, leaf = name.rpartition(".")
            if leaf in ("w1", "w3", "w2"):
                mparams[stem + ".experts_" + leaf] = v[None]
                mparams[stem + ".router"] = np.random.default_rng(0).standard_normal((1, 16))
            else:
                mparams[name] = v
        dense = ref.build_model(cfg, params, D)(x, y)
        moe = ref.build_model(mcfg, mparams, D)(x, y)
        torch.testing.assert_close(moe["logits"], dense["logits"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(moe["loss"], dense["loss"], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Attention / RoPE against naive loops
# --------------------------------------------------------------------------

class AttentionTest(unittest.TestCase):
    def test_naive_loop(self):
        torch.manual_seed(21)
        C, nh, nkv, T, theta = 16, 4, 2, 8, 10000.0
        hd = C // nh
        att = ref.Attention(C, nh, nkv, T, theta).to(D)
        h = torch.randn(2, T, C, dtype=D)
        out = att(h)

        def rope(vec, t):                      # vec (hd,), doc formula verbatim
            r = vec.clone()
            for i in range(hd // 2):
                ang = t * theta ** (-2.0 * i / hd)
                x1, x2 = vec[i], vec[i + hd // 2]
                r[i] = x1 * math.cos(ang) - x2 * math.sin(ang)
                r[i + hd // 2] = x2 * math.cos(ang) + x1 * math.sin(ang)
            return r

        Wq, Wk, Wv, Wo = (m.weight for m in (att.wq, att.wk, att.wv, att.wo))
        ref_out = torch.zeros_like(out)
        for b in range(2):
            heads = []
            for j in range(nh):
                kvh = j // (nh // nkv)
                a = torch.zeros(T, hd, dtype=D)
                for t in range(T):
                    q = rope((Wq @ h[b, t]).view(nh, hd)[j], t)
                    s = torch.stack([
                        q @ rope((Wk @ h[b, u]).view(nkv, hd)[kvh], u) / math.sqrt(hd)
                        for u in range(t + 1)])
                    pr = torch.softmax(s, dim=0)
                    a[t] = sum(pr[u] * (Wv @ h[b, u]).view(nkv, hd)[kvh] for u in range(t + 1))
                heads.append(a)
            ref_out[b] = torch.cat(heads, dim=1) @ Wo.t()
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# AdamW trajectory against the doc formula
# --------------------------------------------------------------------------

class OptimizerTest(unittest.TestCase):
    def test_trajectory_matches_doc_formula(self):
        cfg, params, x, y = case(31, moe=True, capacity_factor=1.0)
        steps, lr, b1, b2, eps, wd, clip = 6, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5
        model = ref.build_model(cfg, params, D)
        losses, norms = ref.train_trajectory(model, x, y, steps, lr, b1, b2, eps, wd, clip)

        # Manual AdamW exactly as doc/model.md writes it.
        m2 = ref.build_model(cfg, params, D)
        named = ref.named_doc_parameters(m2)
        state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in named.items()}
        for step in range(1, steps + 1):
            for p in named.values():
                p.grad = None
            loss = m2(x, y)["loss"]
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in named.items()}
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            self.assertAlmostEqual(losses[step - 1], float(loss), delta=1e-12)
            self.assertAlmostEqual(norms[step - 1], norm, delta=1e-12 * norm)
            scale = min(1.0, clip / (norm + 1e-6))
            with torch.no_grad():
                for n, p in named.items():
                    g = grads[n] * scale
                    m, v = state[n]
                    m.mul_(b1).add_((1 - b1) * g)
                    v.mul_(b2).add_((1 - b2) * g * g)
                    mhat = m / (1 - b1 ** step)
                    vhat = v / (1 - b2 ** step)
                    w = wd if p.ndim >= 2 else 0.0
                    p.sub_(lr * (mhat / (vhat.sqrt() + eps) + w * p))
        self.assertLess(losses[-1], losses[0])
        self.assertTrue(any(n > clip for n in norms))        # clipping was exercised


# --------------------------------------------------------------------------
# Command line: IN.h5 -> OUT.h5
# --------------------------------------------------------------------------

class CommandLineTest(unittest.TestCase):
    def run_cli(self, tmp, *args):
        inp, out = os.path.join(tmp, "in.h5"), os.path.join(tmp, "out.h5")
        subprocess.check_call([sys.executable, os.path.join(HERE, "make_random_case.py"),
                               inp] + list(args))
        subprocess.check_call([sys.executable, os.path.join(HERE, "torch_reference.py"),
                               inp, out])
        return inp, out

    def test_roundtrip(self):
        import h5py
        for args in (["--moe", "--dtype", "float64", "--steps", "3", "--seed", "4",
                      "--capacity-factor", "1.0"],
                     ["--dense", "--dtype", "float32", "--steps", "0", "--seed", "5"]):
            with self.subTest(args=args), tempfile.TemporaryDirectory() as tmp:
                inp, out = self.run_cli(tmp, *args)
                cfg, params, x, y = ref.read_input(inp)
                with h5py.File(out, "r") as f:
                    B, T = x.shape
                    self.assertEqual(f["logits"].shape, (B, T, cfg["vocab_size"]))
                    self.assertEqual(f["logits"].dtype, np.float64)
                    for key in ("loss", "lm_loss", "aux_loss", "z_loss"):
                        self.assertEqual(f[key].shape, ())
                    self.assertAlmostEqual(
                        f["loss"][()], f["lm_loss"][()] + f["aux_loss"][()] + f["z_loss"][()],
                        delta=1e-5)
                    self.assertEqual(set(f["grads"].keys()), set(params.keys()))
                    for n, v in params.items():
                        self.assertEqual(f["grads"][n].shape, v.shape)
                        self.assertEqual(f["grads"][n].dtype, np.float64)
                    if cfg["steps"] > 0:
                        tl = f["trajectory/loss"][()]
                        self.assertEqual(tl.shape, (cfg["steps"],))
                        self.assertEqual(f["trajectory/grad_norm"].shape, (cfg["steps"],))
                        self.assertEqual(tl[0], f["loss"][()])
                    else:
                        self.assertNotIn("trajectory", f)


if __name__ == "__main__":
    unittest.main(verbosity=1)
