#!/usr/bin/python3
"""PyTorch reference implementation of the Fulcrum model (doc/model.md).

This file re-implements, as plainly as possible, the exact model definition in
doc/model.md.  A C++ test writes an input HDF5 file (config, float64 weights,
one batch), runs

    /usr/bin/python3 tests/reference/torch_reference.py IN.h5 OUT.h5

and compares the logits, the losses, every gradient and (optionally) a short
AdamW trajectory with what src/model/ computes.

IN.h5
  /config   attributes: vocab_size d_model n_layers n_heads n_kv_heads d_ffn
            seq_len rope_theta norm_eps is_moe num_experts num_active_experts
            num_shared_experts d_expert first_k_dense renormalize_topk
            capacity_factor aux_loss_coef z_loss_coef dtype ("float32"|"float64"|
            "bfloat16_autocast": float32 weights, forward under
            torch.autocast("cpu", bfloat16) except the router, whose products
            stay float32 as in Fulcrum's precision = "bf16", doc/model.md)
            steps lr beta1 beta2 eps weight_decay grad_clip
            optional (routing options, doc/model.md "Routing options"; absent =
            the paper's recipe): sigmoid_scores route_scale balance_scope
            (0 micro_batch, 1 sequence, 2 global) bias_balancing
            bias_update_rate micro_batches (the batch is split into this many
            equal micro-batches per step, gradients accumulated, loss = their mean)
  /params/<name>   float64, one dataset per parameter, names as in doc/model.md
  /router_bias     optional (n_moe_layers, E) float64: the initial selection bias
  /batch/inputs, /batch/targets   (B,T) int32

OUT.h5 (everything float64)
  /logits (B,T,V); scalars /loss /lm_loss /aux_loss /z_loss
  /grads/<name>   gradient of `loss` (lm + aux + z) at the initial weights
  /trajectory/loss, /trajectory/grad_norm  (steps,)   only if steps > 0
  /trajectory/router_bias (n_moe_layers, E)  the bias after the steps (bias balancing)

Conventions fixed here where doc/model.md leaves a choice (see the comments at
each place):
  * everything is computed in the configured dtype, except the RoPE angles,
    which are computed in float64 and whose cos/sin are then cast;
  * MoE tokens are the N = B*T rows of h flattened batch-major
    (token n = b*T + t); "token order" for capacity dropping is this order;
  * top-k ties go to the lower expert index (stable descending sort, which
    gives exactly torch.topk(sorted=True) values, and its indices when there
    are no ties);
  * f_e counts the top-k assignments BEFORE capacity dropping;
  * renormalisation (renormalize_topk) divides by the sum of all k selected
    probabilities, before capacity dropping; a dropped assignment simply
    contributes nothing (the other weights are not re-normalised);
  * capacity = ceil(capacity_factor * N * k / E) evaluated in double
    precision; capacity_factor <= 0 means no capacity limit;
  * the selection bias is held in float64 and added in the model dtype;
    the global balance scope counts this and the step's earlier
    micro-batches (one rank here), as the C++ side does.
"""

import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_INT_KEYS = [
    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ffn",
    "seq_len", "is_moe", "num_experts", "num_active_experts",
    "num_shared_experts", "d_expert", "first_k_dense", "renormalize_topk",
]
CONFIG_FLOAT_KEYS = [
    "rope_theta", "norm_eps", "capacity_factor", "aux_loss_coef", "z_loss_coef",
]
TRAIN_INT_KEYS = ["steps"]
TRAIN_FLOAT_KEYS = ["lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip"]
# optional keys with their defaults (the paper's recipe)
ROUTING_INT_KEYS = {"sigmoid_scores": 0, "balance_scope": 0, "bias_balancing": 0, "micro_batches": 1}
ROUTING_FLOAT_KEYS = {"route_scale": 1.0, "bias_update_rate": 1e-3}

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16_autocast": torch.float32}


def precision_context(cfg):
    """torch.autocast to bfloat16 for dtype "bfloat16_autocast", else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.get("dtype") == "bfloat16_autocast")


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w   (mean over the last dimension)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(seq_len, head_dim, theta, dtype):
    """cos/sin tables (T, hd/2) for the rotate-half RoPE.

    freq_i = theta^(-2i/hd), angle = t * freq_i.  Computed in float64 and cast
    to the model dtype (the doc does not say in which precision the angles are
    formed; float64 is the most accurate choice).
    """
    half = head_dim // 2
    i = torch.arange(half, dtype=torch.float64)
    freq = theta ** (-2.0 * i / head_dim)
    t = torch.arange(seq_len, dtype=torch.float64)
    angle = t[:, None] * freq[None, :]
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def apply_rope(x, cos, sin):
    """x: (B,T,H,hd).  out[i] = x1 cos - x2 sin, out[i+hd/2] = x2 cos + x1 sin."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c = cos[None, :, None, :]   # (1,T,1,hd/2)
    s = sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class Attention(nn.Module):
    """Causal multi-head attention with grouped-query attention and RoPE."""

    def __init__(self, d_model, n_heads, n_kv_heads, seq_len, rope_theta):
        super().__init__()
        assert d_model % n_heads == 0 and n_heads % n_kv_heads == 0
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        assert self.head_dim % 2 == 0
        self.seq_len = seq_len
        self.rope_theta = rope_theta
        hd = self.head_dim
        self.wq = nn.Linear(d_model, n_heads * hd, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(n_heads * hd, d_model, bias=False)

    def forward(self, h):
        B, T, _ = h.shape
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.wq(h).view(B, T, nh, hd)
        k = self.wk(h).view(B, T, nkv, hd)
        v = self.wv(h).view(B, T, nkv, hd)
        cos, sin = rope_cos_sin(T, hd, self.rope_theta, h.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # GQA: query head j uses kv head j // (nh/nkv).
        group = nh // nkv
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))          # (B,H,T,hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)          # (B,H,T,T)
        # Causal: query position t attends to key positions s <= t.
        mask = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
        scores = scores.masked_fill(mask, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, nh * hd)      # heads in order
        return self.wo(a)


class SwiGLU(nn.Module):
    """swiglu(h) = (silu(h w1^T) * (h w3^T)) w2^T."""

    def __init__(self, d_model, width):
        super().__init__()
        self.w1 = nn.Linear(d_model, width, bias=False)
        self.w3 = nn.Linear(d_model, width, bias=False)
        self.w2 = nn.Linear(width, d_model, bias=False)

    def forward(self, h):
        return self.w2(F.silu(self.w1(h)) * self.w3(h))


def swiglu_fn(h, w1, w3, w2):
    """Functional SwiGLU with explicit (out,in) weight matrices."""
    return (F.silu(h @ w1.t()) * (h @ w3.t())) @ w2.t()


def topk_lower_index_ties(p, k):
    """Top-k of each row of p, sorted descending; ties go to the lower index.

    The values equal torch.topk(p, k, sorted=True).values; the indices equal
    its indices whenever there are no exact ties (torch.topk does not document
    its tie order, the model definition asks for the lower index).
    """
    vals, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


def capacity_keep_mask(topk_idx, num_experts, capacity):
    """Boolean (N,k) mask of the assignments an expert with `capacity` keeps.

    Assignments are visited token-major (token n ascending, then its j-th
    choice, j ascending); each expert keeps the first `capacity` it receives.
    capacity=None keeps everything.
    """
    if capacity is None:
        return torch.ones_like(topk_idx, dtype=torch.bool)
    flat = topk_idx.reshape(-1)                                   # token-major order
    onehot = F.one_hot(flat, num_experts)                         # (N*k, E)
    # 0-based rank of this assignment among those sent to the same expert.
    rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1
    return (rank < capacity).view_as(topk_idx)


def moe_capacity(capacity_factor, n_tokens, k, num_experts):
    """ceil(c * N * k / E) (in double precision), or None when c <= 0."""
    if capacity_factor <= 0:
        return None
    return int(math.ceil(capacity_factor * n_tokens * k / num_experts))


class MoE(nn.Module):
    """Routed mixture of SwiGLU experts plus optional shared experts."""

    def __init__(self, d_model, num_experts, k, num_shared, d_expert,
                 renormalize_topk, capacity_factor, aux_loss_coef, z_loss_coef,
                 sigmoid_scores=0, route_scale=1.0, balance_scope=0, bias_balancing=0):
        super().__init__()
        self.sigmoid = bool(sigmoid_scores)
        self.route_scale = float(route_scale)
        self.scope = int(balance_scope)
        self.use_bias = bool(bias_balancing)
        # not parameters: the selection bias and the step's counts, float64
        self.bias = torch.zeros(num_experts, dtype=torch.float64)
        self.step_counts = torch.zeros(num_experts, dtype=torch.float64)
        self.global_counts = torch.zeros(num_experts, dtype=torch.float64)
        self.global_tokens = 0
        E, C, De = num_experts, d_model, d_expert
        assert 1 <= k <= E
        self.num_experts = E
        self.k = k
        self.renormalize_topk = bool(renormalize_topk)
        self.capacity_factor = capacity_factor
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef
        self.router = nn.Linear(C, E, bias=False)
        self.experts_w1 = nn.Parameter(torch.empty(E, De, C))
        self.experts_w3 = nn.Parameter(torch.empty(E, De, C))
        self.experts_w2 = nn.Parameter(torch.empty(E, C, De))
        # Es shared experts stored as one SwiGLU of width Es*De.
        self.shared = SwiGLU(C, num_shared * d_expert) if num_shared > 0 else None

    def expert(self, e, h):
        return swiglu_fn(h, self.experts_w1[e], self.experts_w3[e], self.experts_w2[e])

    def route(self, x):
        """Router for x (N,C): returns logits_r, p, topk_idx, topk weights w, keep."""
        N = x.shape[0]
        # the router stays in the weights' precision under autocast (Fulcrum
        # keeps its products fp32 in bf16 runs: top-k must not flip on rounding)
        with torch.autocast("cpu", enabled=False):
            logits_r = self.router(x.to(self.router.weight.dtype))  # (N,E)
        if self.sigmoid:
            s = torch.sigmoid(logits_r)                           # selection / combine scores
            p = s / s.sum(dim=-1, keepdim=True)                   # the aux loss's distribution
        else:
            p = torch.softmax(logits_r, dim=-1)                   # in the model dtype
            s = p
        key = s + self.bias.to(s.dtype) if self.use_bias else s   # the bias only selects
        _, topk_idx = topk_lower_index_ties(key.detach(), self.k)  # (N,k)
        topk_p = s.gather(1, topk_idx)
        if self.renormalize_topk or self.sigmoid:
            w = topk_p / topk_p.sum(dim=-1, keepdim=True)
        else:
            w = topk_p
        if self.route_scale != 1.0:
            w = w * self.route_scale
        cap = moe_capacity(self.capacity_factor, N, self.k, self.num_experts)
        keep = capacity_keep_mask(topk_idx, self.num_experts, cap)
        return logits_r, p, topk_idx, w, keep

    def aux_losses(self, logits_r, p, topk_idx, seq_len):
        N, E, k = p.shape[0], self.num_experts, self.k
        # f_e: share of the N*k top-k assignments going to e, counted BEFORE
        # capacity dropping (the C++ side does the same).  No gradient.
        counts = torch.bincount(topk_idx.reshape(-1), minlength=E).to(p.dtype)
        self.step_counts += counts.double()
        if self.scope == 1:      # per sequence, averaged over sequences
            B = N // seq_len
            cb = torch.stack([torch.bincount(topk_idx[b * seq_len:(b + 1) * seq_len].reshape(-1),
                                             minlength=E) for b in range(B)]).to(p.dtype)
            f = cb / (seq_len * k)                                  # (B,E)
            P = p.view(B, seq_len, E).mean(dim=1)                   # (B,E)
            aux = self.aux_loss_coef * E * (f * P).sum(dim=1).mean()
        elif self.scope == 2:    # the step's counts so far (one rank)
            self.global_counts += counts.double()
            self.global_tokens += N
            f = (self.global_counts / (self.global_tokens * k)).to(p.dtype)
            aux = self.aux_loss_coef * E * (f * p.mean(dim=0)).sum()
        else:
            f = counts / (N * k)
            P = p.mean(dim=0)
            aux = self.aux_loss_coef * E * (f * P).sum()
        z = self.z_loss_coef * torch.logsumexp(logits_r, dim=-1).pow(2).mean()
        return aux, z

    def forward(self, h):
        """h: (B,T,C).  Returns (y (B,T,C), aux_loss, z_loss)."""
        shape = h.shape
        x = h.reshape(-1, shape[-1])                              # (N,C), n = b*T + t
        logits_r, p, topk_idx, w, keep = self.route(x)
        y = torch.zeros_like(x)
        for e in range(self.num_experts):
            tok, slot = torch.nonzero((topk_idx == e) & keep, as_tuple=True)
            if tok.numel() == 0:
                continue
            out = self.expert(e, x[tok]) * w[tok, slot].unsqueeze(-1)
            # under torch.autocast(bfloat16) expert outputs are bf16: combine in y's dtype
            y = y.index_add(0, tok, out.to(y.dtype))
        if self.shared is not None:
            y = y + self.shared(x)
        aux, z = self.aux_losses(logits_r, p, topk_idx, shape[1])
        return y.view(shape), aux, z

    def end_step(self, rate):
        """After an optimizer step: the bias update (bias balancing), counts cleared."""
        if self.use_bias:
            load = self.step_counts
            self.bias = self.bias + rate * torch.sign(load.mean() - load)
            self.bias = self.bias - self.bias.mean()
        self.step_counts = torch.zeros_like(self.step_counts)
        self.global_counts = torch.zeros_like(self.global_counts)
        self.global_tokens = 0


class Block(nn.Module):
    def __init__(self, cfg, layer_index):
        super().__init__()
        C = cfg["d_model"]
        self.ln1 = RMSNorm(C, cfg["norm_eps"])
        self.attn = Attention(C, cfg["n_heads"], cfg["n_kv_heads"], cfg["seq_len"],
                              cfg["rope_theta"])
        self.ln2 = RMSNorm(C, cfg["norm_eps"])
        self.is_moe = bool(cfg["is_moe"]) and layer_index >= cfg["first_k_dense"]
        if self.is_moe:
            self.ffn = MoE(C, cfg["num_experts"], cfg["num_active_experts"],
                           cfg["num_shared_experts"], cfg["d_expert"],
                           cfg["renormalize_topk"], cfg["capacity_factor"],
                           cfg["aux_loss_coef"], cfg["z_loss_coef"],
                           cfg.get("sigmoid_scores", 0), cfg.get("route_scale", 1.0),
                           cfg.get("balance_scope", 0), cfg.get("bias_balancing", 0))
        else:
            self.ffn = SwiGLU(C, cfg["d_ffn"])

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        h = self.ln2(x)
        if self.is_moe:
            y, aux, z = self.ffn(h)
        else:
            y, aux, z = self.ffn(h), None, None
        return x + y, aux, z


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        V, C = cfg["vocab_size"], cfg["d_model"]
        self.wte = nn.Parameter(torch.empty(V, C))
        self.layers = nn.ModuleList([Block(cfg, l) for l in range(cfg["n_layers"])])
        self.lnf = RMSNorm(C, cfg["norm_eps"])
        self.lm_head = nn.Linear(C, V, bias=False)                # separate from wte

    def forward(self, inputs, targets):
        """Returns dict(logits, loss, lm_loss, aux_loss, z_loss)."""
        x = self.wte[inputs.long()]                                # (B,T,C)
        aux_total = x.new_zeros(())
        z_total = x.new_zeros(())
        for block in self.layers:
            x, aux, z = block(x)
            if aux is not None:
                aux_total = aux_total + aux
                z_total = z_total + z
        x = self.lnf(x)
        logits = self.lm_head(x)
        V = logits.shape[-1]
        lm_loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1).long(),
                                  reduction="mean")
        loss = lm_loss + aux_total + z_total
        return dict(logits=logits, loss=loss, lm_loss=lm_loss,
                    aux_loss=aux_total, z_loss=z_total)

    def moe_layers(self):
        return [b.ffn for b in self.layers if b.is_moe]

    def end_step(self):
        """After an optimizer step: every MoE layer's bias update, counts cleared."""
        for m in self.moe_layers():
            m.end_step(self.cfg.get("bias_update_rate", 1e-3))


def micro_batch_step(model, inputs, targets, micro_batches=1, autocast=False):
    """Forward (under `autocast`) and backward of `micro_batches` equal
    micro-batches in order, each loss scaled by 1/micro_batches (gradient
    accumulation); returns the mean of each loss and the logits in batch order."""
    B = inputs.shape[0]
    if B % micro_batches != 0:
        raise ValueError("the batch (%d) is not a multiple of micro_batches (%d)" % (B, micro_batches))
    mb = B // micro_batches
    sums = dict(loss=0.0, lm_loss=0.0, aux_loss=0.0, z_loss=0.0)
    logits = []
    for m in range(micro_batches):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(inputs[m * mb:(m + 1) * mb], targets[m * mb:(m + 1) * mb])
        (out["loss"] / micro_batches if micro_batches > 1 else out["loss"]).backward()
        for key in sums:
            sums[key] += float(out[key]) / micro_batches
        logits.append(out["logits"].detach())
    sums["logits"] = torch.cat(logits, dim=0)
    return sums


# --------------------------------------------------------------------------
# Parameter naming (doc/model.md names <-> module tensors)
# --------------------------------------------------------------------------

def named_doc_parameters(model):
    """Ordered dict {doc/model.md name: nn.Parameter}."""
    out = {"wte": model.wte}
    for l, b in enumerate(model.layers):
        pre = "layers.%d." % l
        out[pre + "ln1_w"] = b.ln1.weight
        out[pre + "wq"] = b.attn.wq.weight
        out[pre + "wk"] = b.attn.wk.weight
        out[pre + "wv"] = b.attn.wv.weight
        out[pre + "wo"] = b.attn.wo.weight
        out[pre + "ln2_w"] = b.ln2.weight
        if b.is_moe:
            out[pre + "router"] = b.ffn.router.weight
            out[pre + "experts_w1"] = b.ffn.experts_w1
            out[pre + "experts_w3"] = b.ffn.experts_w3
            out[pre + "experts_w2"] = b.ffn.experts_w2
            if b.ffn.shared is not None:
                out[pre + "shared_w1"] = b.ffn.shared.w1.weight
                out[pre + "shared_w3"] = b.ffn.shared.w3.weight
                out[pre + "shared_w2"] = b.ffn.shared.w2.weight
        else:
            out[pre + "w1"] = b.ffn.w1.weight
            out[pre + "w3"] = b.ffn.w3.weight
            out[pre + "w2"] = b.ffn.w2.weight
    out["lnf_w"] = model.lnf.weight
    out["lm_head"] = model.lm_head.weight
    return out


def is_norm_weight(name):
    return name.endswith("ln1_w") or name.endswith("ln2_w") or name == "lnf_w"


def build_model(cfg, params, dtype):
    """Model in `dtype` with weights copied from {name: float64 array}."""
    model = Model(cfg).to(dtype)
    named = named_doc_parameters(model)
    missing = sorted(set(named) - set(params))
    extra = sorted(set(params) - set(named))
    if missing or extra:
        raise ValueError("parameter set mismatch: missing %s, unexpected %s" % (missing, extra))
    with torch.no_grad():
        for name, p in named.items():
            src = torch.as_tensor(params[name])
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError("%s: shape %s, expected %s"
                                 % (name, tuple(src.shape), tuple(p.shape)))
            p.copy_(src.to(dtype))
    bias = cfg.get("router_bias")
    if bias is not None:
        for m, b in zip(model.moe_layers(), bias):
            m.bias = torch.as_tensor(b, dtype=torch.float64).clone()
    return model


def make_adamw(model, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.AdamW; weight decay for rank >= 2 params, 0 for norm weights."""
    named = named_doc_parameters(model)
    decay = [p for p in named.values() if p.ndim >= 2]
    no_decay = [p for p in named.values() if p.ndim < 2]
    groups = [dict(params=decay, weight_decay=weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)


def train_trajectory(model, inputs, targets, steps, lr, beta1, beta2, eps,
                     weight_decay, grad_clip, autocast=False, micro_batches=1):
    """`steps` AdamW steps on the same batch; returns (losses, grad_norms).

    losses[i] is the loss computed before the i-th update; grad_norms[i] is the
    total L2 norm returned by clip_grad_norm_ (before clipping).
    """
    params = list(named_doc_parameters(model).values())
    opt = make_adamw(model, lr, beta1, beta2, eps, weight_decay)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        if micro_batches == 1:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(inputs, targets)["loss"]
            loss.backward()
        else:
            loss = torch.tensor(micro_batch_step(model, inputs, targets, micro_batches, autocast)["loss"])
        for p in params:   # a parameter that got no gradient gets a zero one
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        model.end_step()   # bias balancing: the update from this step's counts
        losses.append(float(loss.detach()))
        norms.append(float(norm))
    return losses, norms


# --------------------------------------------------------------------------
# HDF5 driver
# --------------------------------------------------------------------------

def _attr(attrs, key):
    if key not in attrs:
        raise KeyError("/config is missing attribute '%s'" % key)
    v = attrs[key]
    import numpy as np
    if isinstance(v, np.ndarray):   # (1,)-shaped attributes (H5LT writes these)
        v = v.reshape(-1)[0]
    return v


def read_input(path):
    import h5py
    with h5py.File(path, "r") as f:
        a = f["config"].attrs
        cfg = {}
        for key in CONFIG_INT_KEYS + TRAIN_INT_KEYS:
            cfg[key] = int(_attr(a, key))
        for key in CONFIG_FLOAT_KEYS + TRAIN_FLOAT_KEYS:
            cfg[key] = float(_attr(a, key))
        for key, default in ROUTING_INT_KEYS.items():
            cfg[key] = int(_attr(a, key)) if key in a else default
        for key, default in ROUTING_FLOAT_KEYS.items():
            cfg[key] = float(_attr(a, key)) if key in a else default
        cfg["router_bias"] = f["router_bias"][()] if "router_bias" in f else None
        dt = _attr(a, "dtype")
        if isinstance(dt, bytes):
            dt = dt.decode()
        cfg["dtype"] = str(dt)
        if cfg["dtype"] not in DTYPES:
            raise ValueError("dtype must be float32, float64 or bfloat16_autocast, got %r" % cfg["dtype"])
        params = {name: f["params"][name][()] for name in f["params"].keys()}
        inputs = torch.as_tensor(f["batch/inputs"][()].astype("int64"))
        targets = torch.as_tensor(f["batch/targets"][()].astype("int64"))
    V = cfg["vocab_size"]
    for nm, t in (("inputs", inputs), ("targets", targets)):
        if t.ndim != 2 or t.shape[1] > cfg["seq_len"]:
            raise ValueError("%s must be (B,T) with T <= seq_len, got %s" % (nm, tuple(t.shape)))
        if t.numel() and (t.min() < 0 or t.max() >= V):
            raise ValueError("%s out of range [0, %d)" % (nm, V))
    if inputs.shape != targets.shape:
        raise ValueError("inputs and targets differ in shape")
    return cfg, params, inputs, targets


def run(cfg, params, inputs, targets):
    """Everything OUT.h5 holds, as float64 numpy arrays / floats."""
    dtype = DTYPES[cfg["dtype"]]
    model = build_model(cfg, params, dtype)
    named = named_doc_parameters(model)
    out = micro_batch_step(model, inputs, targets, cfg.get("micro_batches", 1),
                           autocast=cfg.get("dtype") == "bfloat16_autocast")
    res = {
        "logits": out["logits"].double().numpy(),
        "loss": out["loss"], "lm_loss": out["lm_loss"],
        "aux_loss": out["aux_loss"], "z_loss": out["z_loss"],
        "grads": {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                  .detach().double().numpy() for n, p in named.items()},
    }
    if cfg["steps"] > 0:
        model = build_model(cfg, params, dtype)   # fresh copy of the initial weights
        losses, norms = train_trajectory(
            model, inputs, targets, cfg["steps"], cfg["lr"], cfg["beta1"], cfg["beta2"],
            cfg["eps"], cfg["weight_decay"], cfg["grad_clip"],
            autocast=cfg["dtype"] == "bfloat16_autocast", micro_batches=cfg.get("micro_batches", 1))
        res["trajectory"] = {"loss": losses, "grad_norm": norms}
        if cfg.get("bias_balancing", 0) and model.moe_layers():
            res["trajectory"]["router_bias"] = torch.stack([m.bias for m in model.moe_layers()]).numpy()
    return res


def write_output(path, res):
    import h5py
    import numpy as np
    with h5py.File(path, "w") as f:
        f.create_dataset("logits", data=np.asarray(res["logits"], dtype=np.float64))
        for key in ("loss", "lm_loss", "aux_loss", "z_loss"):
            f.create_dataset(key, data=np.float64(res[key]))
        g = f.create_group("grads")
        for name, arr in res["grads"].items():
            g.create_dataset(name, data=np.asarray(arr, dtype=np.float64))
        if "trajectory" in res:
            t = f.create_group("trajectory")
            for key in ("loss", "grad_norm", "router_bias"):
                if key in res["trajectory"]:
                    t.create_dataset(key, data=np.asarray(res["trajectory"][key], dtype=np.float64))


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: %s IN.h5 OUT.h5\n" % argv[0])
        return 2
    torch.set_num_threads(1)   # deterministic, and the cases are tiny
    cfg, params, inputs, targets = read_input(argv[1])
    write_output(argv[2], run(cfg, params, inputs, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
