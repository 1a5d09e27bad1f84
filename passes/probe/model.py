"""The gated blocks of Probe Pruning: pure torch with explicit weights, eager AND exportable.

``GatedBlock`` (``GatedAttention`` / ``GatedMLP``) computes one residual branch of an HF
decoder layer and, with a ``DYNAMIC`` gate, Probe Pruning (docs/algorithms.md §2): probe
selection on the residual entering the block, the probe through the block's own
projections, fusion with H, PPsp scores, ``topk(score, keep)`` (a constant ``keep``), then
the full batch through the gathered, smaller weights; the new H is the EMA of the batch's
squared activations on the kept channels only. ``STATIC`` blocks gather a fixed index set
(with an optional output bias: FLAP's compensation); ``DENSE`` blocks run whole. No
data-dependent shapes and no control flow depend on tensor values, so ``torch.onnx.export``
gives a statically shaped graph (TopK with constant K, Gather, MatMul).

Family differences are not re-implemented here: they are the HF modules themselves (copied
by ``frozen``) or numbers read from them. The block's pre-norm and, where the layer has one
(Gemma), its post-norm; the MLP's own ``act_fn``; the attention's ``scaling`` (Gemma's
``query_pre_attn_scalar``), its per-head-dim ``q_norm`` / ``k_norm`` (Qwen3, Gemma 3:
applied to kept heads alone, since they act within a head) and its logit soft-capping
(Gemma 2's ``attn_logit_softcapping``); rotary tables come in per call (``forward``'s
``rope``), computed from the model's own rotary module (Phi-3's partial rotary: ``rotate``
turns the first dims the tables cover). Only the projections are copied as plain matrices,
because they are what gets gathered: Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` split
into the same q/k/v and gate/up matrices as every other family (``projection``).

Attention under GQA: query head h reads KV head ``h // group`` (local numbering after any
static plan); pruning drops query heads only (q rows + o_proj columns), k/v stay whole.
Biases come from the modules themselves (``linear.bias is not None``), never from config
keys: q/k/v biases (Qwen2; Llama with ``attention_bias``) and MLP gate/up biases (Llama with
``mlp_bias``) are gathered with their weight rows; o_proj / down_proj biases are output
biases added whole, like FLAP's compensation (skipping a unit removes its column, not the
bias), so a gated block equals the HF block whose skipped columns are zeroed (a post-norm
applies to the whole output, bias included, as in HF).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from prunec.passes.probe import maths
from prunec.passes.probe.layout import BlockGate, GateKind
from prunec.passes.reference import FUSED_PARTS, projection_weight


@dataclass(frozen=True)
class ProbeSettings:
    full_batch: bool  # the whole batch is the probe (upper bound)
    token_frac: Fraction
    sample_frac: Fraction
    momentum: float
    head_dim: int
    probe_free: bool = False  # benchmark variant: scores from H alone (no probe), same TopK
    compensate: bool = False  # skipped units contribute the probe's mean activation
    per_batch: bool = False  # mode = prompt: one kept set per batch of prompts (kept = per-batch)


def frozen(module: nn.Module) -> nn.Module:
    """A deep copy of an HF module whose parameters are buffers: the gated model holds
    constants (no gradients), and ``buffers()`` lists every weight an export writes."""
    held = copy.deepcopy(module)
    for sub in held.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach())
    return held


def optional_frozen(module: nn.Module | None) -> nn.Module | None:
    """``frozen(module)``, or None for None."""
    return None if module is None else frozen(module)


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma's soft-capping ``cap * tanh(x / cap)`` (``x`` itself when ``cap`` is None)."""
    return x if cap is None else torch.tanh(x / cap) * cap


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF ``apply_rotary_pos_emb`` for ``x [B, H, T, d]`` and ``cos/sin [T, r]``: partial
    rotary (Phi-3's ``partial_rotary_factor``, r < d) rotates the first r dims and passes
    the rest, as Phi-3's own ``apply_rotary_pos_emb`` does."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat([rotate(x[..., :r], cos, sin), x[..., r:]], dim=-1)
    half = r // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention_scores(q: torch.Tensor, k: torch.Tensor, scaling: float, cap: float | None
                     ) -> torch.Tensor:
    """Attention logits of ``q/k [B, H, T, d]`` scaled by ``scaling``, then soft-capped at
    ``cap`` (None: not capped), before any mask."""
    return soft_cap(torch.matmul(q, k.transpose(-1, -2)) * scaling, cap)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
                     cap: float | None) -> torch.Tensor:
    """Softmax attention of ``q/k/v [B, H, T, d]`` with a causal mask -> ``[B, T, H*d]``;
    logits scaled by ``scaling``, then soft-capped at ``cap`` (None: not capped)."""
    t = q.shape[2]
    pos = torch.arange(t, device=q.device)
    masked = pos.unsqueeze(0) > pos.unsqueeze(1)
    scores = attention_scores(q, k, scaling, cap).masked_fill(masked, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out.transpose(1, 2).reshape(q.shape[0], t, -1)


def update_history(hist: torch.Tensor, act: torch.Tensor, cols: torch.Tensor,
                   momentum: float) -> torch.Tensor:
    """EMA of ``mean_b act^2`` into rows ``cols`` (channels), positions ``0..T-1``, of
    ``hist [C, max_len]``; channels not kept are unchanged. One Gather of whole rows, the EMA
    on their first T entries, one row scatter back (ScatterND): of the variants measured on
    onnxruntime CPU (element scatter on ``[max_len, C]``, inverse-permutation Gather + Where
    in either layout) the fastest, 1.9 ms vs 2.2-3.9 ms at 4x128 for a 1536 x 512 H."""
    t = act.shape[1]
    rows = hist.index_select(0, cols)
    head = maths.ema_update(rows[:, :t], act.pow(2).mean(0).t(), momentum)
    return hist.index_copy(0, cols, torch.cat([head, rows[:, t:]], dim=1))


def linear_bias(linear: Any) -> torch.Tensor | None:
    """A detached copy of an ``nn.Linear``'s bias, or None when it has none."""
    bias = linear.bias
    return None if bias is None else bias.detach().clone()


def projection(layer: Any, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight ``[out, in]``, bias or None), detached copies, of projection ``name`` (q/k/v,
    gate/up) of a decoder layer: its own linear, or Phi-3's rows of the fused ``qkv_proj`` /
    ``gate_up_proj`` (``passes.reference.projection_weight``, the one home of that layout).
    A fused projection has no bias in transformers; one that has is refused, not dropped."""
    block_name, fused_name, _ = FUSED_PARTS[name]
    block = getattr(layer, block_name)
    weight = projection_weight(layer, name).detach().clone()
    if hasattr(block, name):
        return weight, linear_bias(getattr(block, name))
    if getattr(block, fused_name).bias is not None:
        raise ValueError(f"{fused_name} has a bias: probe gating splits fused projections "
                         "without one (as transformers builds them)")
    return weight, None


def output_bias(*biases: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the output biases that exist (None when there is none)."""
    present = [b for b in biases if b is not None]
    return None if not present else torch.stack(present).sum(0)


def project_in(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
               ) -> torch.Tensor:
    """``x @ W^T (+ b)`` for a weight ``[out, in]`` and a bias of any shape with ``out``
    elements (or None)."""
    y = x @ weight.t()
    return y if bias is None else y + bias.reshape(-1)


def select_probe(h: torch.Tensor, s: ProbeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions ascending, samples) of the probe for the residual ``h [B, T, D]``."""
    pos = maths.probe_positions(h, s.token_frac)
    smp = maths.probe_samples(h.index_select(1, pos), s.sample_frac)
    return pos, smp


@dataclass(frozen=True)
class Norms:
    """The HF norm modules around a block: ``pre`` on the residual entering it, ``post`` on
    its output before the residual add (Gemma's sandwich norms; None elsewhere)."""

    pre: nn.Module
    post: nn.Module | None = None


class GatedBlock(nn.Module):
    """Shared plumbing of the attention and MLP blocks: norms, gate, static index, bias."""

    static_idx: torch.Tensor | None
    bias: torch.Tensor | None
    rope_kind = 0  # which rotary tables the block reads (attention only)

    def __init__(self, norms: Norms, gate: BlockGate, settings: ProbeSettings,
                 static: tuple[torch.Tensor, torch.Tensor | None] | None,
                 own_bias: torch.Tensor | None) -> None:
        """``static``: (kept indices, FLAP bias or None) of a STATIC gate; ``own_bias``: the
        output projection's own bias; the two add into one output bias."""
        super().__init__()
        self.gate, self.settings = gate, settings
        self.norm = frozen(norms.pre)
        self.post_norm = optional_frozen(norms.post)
        idx, bias = static if static is not None else (None, None)
        self.register_buffer("static_idx", idx)
        self.register_buffer("bias", output_bias(own_bias, bias))

    @property
    def dynamic(self) -> bool:
        return self.gate.kind is GateKind.DYNAMIC

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """The block's input: its pre-norm (the HF module) of the residual ``h``."""
        x: torch.Tensor = self.norm(h)
        return x

    def choose(self, h: torch.Tensor, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               hist: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(kept indices for this batch or None: all, the probe's mean activation per
        column when the policy compensates skipped units, else None)."""
        if self.gate.kind is GateKind.STATIC:
            return self.static_idx, None
        if not self.dynamic:
            return None, None
        assert hist is not None
        scores, mean = self.scores(h, x, rope, hist)
        return torch.topk(scores, self.gate.keep).indices, mean

    def scores(self, h: torch.Tensor, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """PPsp scores from the probe (or the full batch) fused with H, and (compensating
        policies) the probe's mean activation per column."""
        if self.settings.probe_free:
            return self.importance(hist[:, :x.shape[1]].sum(1)), None
        if self.settings.full_batch:
            act, hsel = self.activation(x, rope, None), hist[:, :x.shape[1]]
        else:
            pos, smp = select_probe(h, self.settings)
            p = self.normed(h.index_select(0, smp).index_select(1, pos))
            cos, sin = rope
            act = self.activation(p, (cos.index_select(0, pos), sin.index_select(0, pos)), None)
            hsel = hist.index_select(1, pos)
        return self.scored(act, hsel)

    def scored(self, act: torch.Tensor, hsel: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """PPsp scores of the probe's activations ``act [b, n, C]`` fused with H at its
        positions ``hsel [C, n]``, and (compensating policies) their mean per column."""
        mean = act.mean(dim=(0, 1)) if self.settings.compensate else None
        return self.importance(maths.fuse(act.pow(2).mean(0).t(), hsel)), mean

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                hist: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None,
                                                   torch.Tensor | None]:
        """(block output, new history or None, kept indices or None).

        Compensation: ``W[:, skipped] @ m[skipped]`` is added for the probe mean ``m``,
        computed as ``(act - m[kept]) @ W_kept + W @ m`` (one matrix-vector product more)."""
        x = self.normed(h)
        idx, mean = self.choose(h, x, rope, hist)
        act = self.activation(x, rope, idx)
        out = self.output(act, idx, mean)
        if not self.dynamic:
            return out, None, idx
        assert hist is not None and idx is not None
        return out, update_history(hist, act, self.columns(idx), self.settings.momentum), idx

    def output(self, act: torch.Tensor, idx: torch.Tensor | None, mean: torch.Tensor | None
               ) -> torch.Tensor:
        """The block's output from the kept units' activation ``act`` (all units when ``idx``
        is None), the compensation of the skipped ones, the output bias and the post-norm."""
        if mean is not None and idx is not None:
            out = self.project(act - mean.index_select(0, self.columns(idx)), idx)
            out = out + self.project(mean, None)
        else:
            out = self.project(act, idx)
        return self.post_normed(out if self.bias is None else out + self.bias)

    def post_normed(self, out: torch.Tensor) -> torch.Tensor:
        """The block's post-norm (Gemma's, the HF module) of its output, else ``out``."""
        if self.post_norm is None:
            return out
        normed: torch.Tensor = self.post_norm(out)
        return normed

    def activation(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   idx: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def project(self, act: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def importance(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GatedMLP(GatedBlock):
    """Gated MLP ``act_fn(gate) * up`` (the module's own ``act_fn``: SiLU, Gemma's
    GELU-tanh; Phi-3 names it ``activation_fn``) of a decoder layer's ``mlp``; unit =
    intermediate channel k (gate/up row k, down column k; Phi-3: rows k and C + k of the
    fused ``gate_up_proj``)."""

    w_gate_up: torch.Tensor
    b_gate_up: torch.Tensor | None
    w_down_t: torch.Tensor
    down_pow4: torch.Tensor

    def __init__(self, layer: Any, norms: Norms, gate: BlockGate, settings: ProbeSettings,
                 static: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> None:
        mlp = layer.mlp
        super().__init__(norms, gate, settings, static, linear_bias(mlp.down_proj))
        self.act_fn = frozen(mlp.act_fn if hasattr(mlp, "act_fn") else mlp.activation_fn)
        down = mlp.down_proj.weight.detach()
        (w_gate, b_gate), (w_up, b_up) = (projection(layer, n) for n in ("gate_proj", "up_proj"))
        # gate and up rows side by side: one Gather (axis 1) and one MatMul for both
        self.register_buffer("w_gate_up", torch.stack([w_gate, w_up]))
        self.register_buffer("b_gate_up", _stacked_bias(b_gate, b_up, w_gate))
        self.register_buffer("w_down_t", down.t().contiguous())
        self.register_buffer("down_pow4", maths.column_pow4(down))

    def activation(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   idx: torch.Tensor | None) -> torch.Tensor:
        w, b = self.w_gate_up, self.b_gate_up
        if idx is not None:
            w = w.index_select(1, idx)
            b = None if b is None else b.index_select(1, idx)
        gate, up = project_in(x, w.reshape(-1, w.shape[-1]), b).chunk(2, dim=-1)
        act: torch.Tensor = self.act_fn(gate) * up
        return act

    def project(self, act: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        wd = self.w_down_t if idx is None else self.w_down_t.index_select(0, idx)
        return act @ wd

    def importance(self, s: torch.Tensor) -> torch.Tensor:
        return maths.mlp_importance(s, self.down_pow4)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        return idx


def _stacked_bias(gate: torch.Tensor | None, up: torch.Tensor | None, weight: torch.Tensor
                  ) -> torch.Tensor | None:
    """``[2, channels]`` gate and up biases (zeros for a missing one), or None for neither;
    ``weight``: the gate projection's ``[channels, hidden]``."""
    if gate is None and up is None:
        return None
    zeros = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return torch.stack([zeros if gate is None else gate, zeros if up is None else up])


class GatedAttention(GatedBlock):
    """GQA attention of a decoder layer's ``self_attn``; unit = query head h (q rows and
    o_proj columns h*d .. h*d+d-1; Phi-3: q, k and v are the fused ``qkv_proj``'s parts).
    ``rope_kind`` indexes the rotary tables the model passes (Gemma 3's sliding layers
    rotate with their own base)."""

    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    b_q: torch.Tensor | None
    b_k: torch.Tensor | None
    b_v: torch.Tensor | None
    w_o_t: torch.Tensor
    o_pow4: torch.Tensor
    kv_map: torch.Tensor
    head_offsets: torch.Tensor

    def __init__(self, layer: Any, norms: Norms, gate: BlockGate, settings: ProbeSettings,
                 static: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                 rope_kind: int = 0) -> None:
        attn = layer.self_attn
        super().__init__(norms, gate, settings, static, linear_bias(attn.o_proj))
        self.rope_kind, self.scaling = rope_kind, float(attn.scaling)
        self.softcap = getattr(attn, "attn_logit_softcapping", None)
        self.q_norm = optional_frozen(getattr(attn, "q_norm", None))
        self.k_norm = optional_frozen(getattr(attn, "k_norm", None))
        d = settings.head_dim
        (q, b_q), (k, b_k), (v, b_v) = (projection(layer, n) for n in ("q_proj", "k_proj",
                                                                       "v_proj"))
        o = attn.o_proj.weight.detach()
        n_heads, n_kv = q.shape[0] // d, k.shape[0] // d
        self.register_buffer("w_q", q.reshape(n_heads, d, -1))
        self.register_buffer("w_k", k)
        self.register_buffer("w_v", v)
        self.register_buffer("b_q", None if b_q is None else b_q.reshape(n_heads, d))
        self.register_buffer("b_k", b_k)
        self.register_buffer("b_v", b_v)
        self.register_buffer("w_o_t", o.t().reshape(n_heads, d, -1).contiguous())
        self.register_buffer("o_pow4", maths.column_pow4(o))
        self.register_buffer("kv_map", torch.arange(n_heads) // (n_heads // n_kv))
        self.register_buffer("head_offsets", torch.arange(d))

    def activation(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   idx: torch.Tensor | None) -> torch.Tensor:
        b, t, hidden = x.shape
        d = self.settings.head_dim
        wq, bq, kv_map = self.w_q, self.b_q, self.kv_map
        if idx is not None:
            wq, kv_map = wq.index_select(0, idx), kv_map.index_select(0, idx)
            bq = None if bq is None else bq.index_select(0, idx)
        q, k = self.head_norms(project_in(x, wq.reshape(-1, hidden), bq).view(b, t, -1, d),
                               project_in(x, self.w_k, self.b_k).view(b, t, -1, d))
        v = project_in(x, self.w_v, self.b_v).view(b, t, -1, d).transpose(1, 2)
        cos, sin = rope
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        return causal_attention(q, k.index_select(1, kv_map), v.index_select(1, kv_map),
                                self.scaling, self.softcap)

    def head_norms(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q_norm`` / ``k_norm`` (where the module has them) on ``[B, T, heads, d]``."""
        return _head_norm(self.q_norm, q), _head_norm(self.k_norm, k)

    def attention_logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``attention_scores`` with the module's ``scaling`` and soft-cap (Gemma 2)."""
        return attention_scores(q, k, self.scaling, self.softcap)

    def project(self, act: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        wo = self.w_o_t if idx is None else self.w_o_t.index_select(0, idx)
        return act @ wo.reshape(-1, wo.shape[-1])

    def importance(self, s: torch.Tensor) -> torch.Tensor:
        return maths.head_importance(s, self.o_pow4, self.settings.head_dim)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        d = self.settings.head_dim
        return (idx.unsqueeze(1) * d + self.head_offsets.unsqueeze(0)).reshape(-1)


def _head_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """A per-head-dim norm (``q_norm`` / ``k_norm``) on ``x [B, T, heads, d]``, or ``x``."""
    if norm is None:
        return x
    normed: torch.Tensor = norm(x)
    return normed
