"""The gated forward of any supported family, built from a (possibly statically pruned) HF
causal LM: Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3 text (``compiler.families``'
probe column; Phi-3's fused projections split into q/k/v and gate/up, ``model.projection``).

``build_gated(model, shape, policy, history)`` copies the projections into a ``GatedModel``
(``model.GatedBlock``s in residual order, removed blocks left out) and takes every family
difference from the HF modules: the embedding module (Gemma's scaled embedding), each
block's norms (``block_norms``: Llama's pre-norms, Gemma's pre- and post-norms), the final
norm, the rotary module's tables (one per layer type when it keeps several: Gemma 3), the
attention's scaling, q/k norms and soft-capping (``model.GatedAttention``), the MLP's
activation, and the config's ``final_logit_softcapping`` (Gemma). Its history inputs are, in
order, the dynamic blocks named ``history.{layer}.attn`` / ``history.{layer}.mlp`` (layer
order, attention before MLP), each ``[C, max_len]`` (channel rows, position columns: the
transpose of ``BlockHistory.sq``, so that kept channels are whole rows) with C =
heads*head_dim of the layer's o_proj input or its MLP channels. ``ProbeRunner`` is the eager
API that carries H from batch to batch (the reference the ONNX export is checked against).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from prunec.compiler.budget import as_fraction
from prunec.compiler.families import rope_fixed_len, rope_problem, window_problem
from prunec.compiler.ir import KeptScope, ModelShape, ProbeMetric, ProbeMode, ProbePolicy
from prunec.compiler.shape import layer_windows
from prunec.passes.probe.history import BlockHistory, History
from prunec.passes.probe.layout import BlockGate, GateKind, LayerGate, layer_gates
from prunec.passes.probe.model import (
    GatedAttention,
    GatedBlock,
    GatedMLP,
    Norms,
    ProbeSettings,
    frozen,
    soft_cap,
)
from prunec.passes.probe.static import static_choice
from prunec.passes.reference import ZeroAttention, decoder_layers

Rope = tuple[torch.Tensor, torch.Tensor]


class GatedModel(nn.Module):
    """Embedding -> gated blocks (residual) -> final norm -> LM head (-> soft-cap)."""

    lm_head: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, model: Any, blocks: list[GatedBlock], names: list[str],
                 ropes: list[Rope]) -> None:
        """``ropes``: cos/sin ``[max_len, head_dim]`` per rope kind (``GatedAttention
        .rope_kind``); the first is ``cos``/``sin`` (the only one outside Gemma 3)."""
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.history_names = tuple(names)
        inner = model.model
        self.embed_tokens = frozen(inner.embed_tokens)
        tied = model.lm_head.weight is inner.embed_tokens.weight
        self.register_buffer("lm_head", None if tied else model.lm_head.weight.detach().clone())
        self.norm = frozen(inner.norm)
        self.logit_cap: float | None = getattr(model.config, "final_logit_softcapping", None)
        for k, (cos, sin) in enumerate(ropes):
            self.register_buffer(f"cos{k or ''}", cos)
            self.register_buffer(f"sin{k or ''}", sin)
        self.n_ropes = len(ropes)

    def forward(self, input_ids: torch.Tensor, histories: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(logits, new histories in ``history_names`` order, kept indices likewise)."""
        h = self.embed_ids(input_ids)
        ropes = self.ropes(input_ids.shape[1])
        new: list[torch.Tensor] = []
        kept: list[torch.Tensor] = []
        for block in self.block_list():
            hist = histories[len(new)] if block.dynamic else None
            out, nh, idx = block(h, ropes[block.rope_kind], hist)
            h = h + out
            if nh is not None and idx is not None:
                new.append(nh)
                kept.append(idx)
        return self.head_logits(h), new, kept

    def ropes(self, t: int) -> list[Rope]:
        """The first ``t`` rows of every rope kind's cos/sin tables."""
        return [(getattr(self, f"cos{k or ''}")[:t], getattr(self, f"sin{k or ''}")[:t])
                for k in range(self.n_ropes)]

    def rope_table(self, kind: int) -> Rope:
        """The whole cos/sin ``[max_len, head_dim]`` tables of rope kind ``kind``."""
        cos, sin = getattr(self, f"cos{kind or ''}"), getattr(self, f"sin{kind or ''}")
        assert isinstance(cos, torch.Tensor) and isinstance(sin, torch.Tensor)
        return cos, sin

    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The model's own embedding module (Gemma's scales by sqrt(hidden))."""
        h: torch.Tensor = self.embed_tokens(input_ids)
        return h

    def block_list(self) -> list[GatedBlock]:
        """The gated blocks in residual order (``self.blocks`` is typed as Modules)."""
        return [b for b in self.blocks if isinstance(b, GatedBlock)]

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm, the (tied or own) LM head and any final soft-capping on the residual
        ``h [B, T, D]``."""
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head
        assert isinstance(head, torch.Tensor)  # tied: the embedding module's own matrix
        return soft_cap(self.norm(h) @ head.t(), self.logit_cap)


def rope_kinds(model: Any) -> tuple[str | None, ...]:
    """The rotary module's layer types when it keeps one table per type (Gemma 3's local and
    global rope), else ``(None,)``: one table for every layer."""
    kinds = getattr(model.model.rotary_emb, "layer_types", None)
    return (None,) if not kinds else tuple(kinds)


def rope_tables(model: Any, max_len: int) -> list[Rope]:
    """cos/sin ``[max_len, head_dim]`` per ``rope_kinds``, from the model's rotary module
    itself (its frequencies, scaling and any per-layer-type base)."""
    rotary = model.model.rotary_emb
    weight = model.model.embed_tokens.weight  # the rotary module reads x's dtype and device
    x = torch.zeros(1, dtype=weight.dtype, device=weight.device)
    pos = torch.arange(max_len, device=weight.device).unsqueeze(0)
    tables = []
    for kind in rope_kinds(model):
        cos, sin = rotary(x, pos) if kind is None else rotary(x, pos, kind)
        tables.append((cos[0].detach().clone(), sin[0].detach().clone()))
    return tables


def block_norms(layer: Any) -> tuple[Norms, Norms]:
    """(attention, MLP) norms of an HF decoder layer: with ``pre_feedforward_layernorm``
    (Gemma) both blocks have pre- and post-norms; else ``input_layernorm`` and
    ``post_attention_layernorm`` are the two pre-norms (Llama)."""
    if hasattr(layer, "pre_feedforward_layernorm"):
        return (Norms(layer.input_layernorm, layer.post_attention_layernorm),
                Norms(layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm))
    return Norms(layer.input_layernorm), Norms(layer.post_attention_layernorm)


def settings_of(shape: ModelShape, policy: ProbePolicy) -> ProbeSettings:
    return ProbeSettings(full_batch=policy.mode is ProbeMode.FULL_BATCH,
                         token_frac=as_fraction(policy.token_fraction),
                         sample_frac=as_fraction(policy.sample_fraction),
                         momentum=float(policy.momentum), head_dim=shape.head_dim,
                         compensate=policy.compensate,
                         per_batch=policy.kept is KeptScope.PER_BATCH)


def _check_supported(model: Any, max_len: int) -> None:
    """What the gated forward cannot express: attention that is not causal (Gemma's
    ``use_bidirectional_attention``), on a layer whose attention is kept a sliding window
    narrower than ``max_len``, and rotary tables that depend on the sequence length below
    ``max_len`` (longrope, dynamic scaling). The windows are ``compiler.shape.layer_windows``
    of the model's config, the rules ``compiler.families.window_problem`` and
    ``rope_problem``: what ``prunec check`` applies to config.json (P0303, P0226); this
    guards the API. Projection biases, activations and norms are all the modules' own."""
    cfg = model.config
    layers = decoder_layers(model)
    kept = [not isinstance(layer.self_attn, ZeroAttention) for layer in layers]
    if not all(getattr(layer.self_attn, "is_causal", True) for k, layer in zip(kept, layers) if k):
        raise ValueError(f"probe gating is causal, and this {cfg.model_type} model's "
                         "attention is not causal (use_bidirectional_attention)")
    windows = layer_windows(cfg.model_type, cfg.to_dict(), f"{cfg.model_type} config")
    problem = window_problem((w for k, w in zip(kept, windows) if k), max_len) or (
        rope_problem(rope_fixed_len(cfg.model_type, cfg.to_dict()), max_len))
    if problem:
        raise ValueError(problem)


def _static(policy: ProbePolicy, weight: torch.Tensor, stats: BlockHistory | None,
            history: History, unit: int, gate: BlockGate
            ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if gate.kind is not GateKind.STATIC:
        return None
    assert stats is not None
    return static_choice(policy.metric, weight, stats, history.calib_len, unit, gate.keep)


def _attention(layer: Any, g: LayerGate, policy: ProbePolicy, history: History,
               settings: ProbeSettings, kinds: tuple[str | None, ...]) -> GatedAttention:
    assert g.attn is not None
    attn = layer.self_attn
    st = _static(policy, attn.o_proj.weight, history.attn[g.index], history,
                 settings.head_dim, g.attn)
    kind = kinds.index(getattr(attn, "layer_type", None)) if len(kinds) > 1 else 0
    return GatedAttention(layer, block_norms(layer)[0], g.attn, settings, st, kind)


def _mlp(layer: Any, g: LayerGate, policy: ProbePolicy, history: History,
         settings: ProbeSettings) -> GatedMLP:
    assert g.mlp is not None
    st = _static(policy, layer.mlp.down_proj.weight, history.mlp[g.index], history, 1, g.mlp)
    return GatedMLP(layer, block_norms(layer)[1], g.mlp, settings, st)


def _blocks(model: nn.Module, gates: tuple[LayerGate, ...], policy: ProbePolicy,
            history: History, settings: ProbeSettings) -> tuple[list[GatedBlock], list[str]]:
    blocks: list[GatedBlock] = []
    names: list[str] = []
    kinds = rope_kinds(model)
    for layer, g in zip(decoder_layers(model), gates):
        if g.attn is not None:
            blocks.append(_attention(layer, g, policy, history, settings, kinds))
            names += [f"history.{g.index}.attn"] if blocks[-1].dynamic else []
        if g.mlp is not None:
            blocks.append(_mlp(layer, g, policy, history, settings))
            names += [f"history.{g.index}.mlp"] if blocks[-1].dynamic else []
    return blocks, names


def build_gated(model: nn.Module, shape: ModelShape, policy: ProbePolicy,
                history: History, probe_free: bool = False) -> GatedModel:
    """The gated forward of ``model`` under ``policy`` (static metrics give fixed masks).
    ``probe_free`` (benchmarks only) scores from H alone, to measure the probe's cost."""
    _check_supported(model, history.max_len)
    static = policy.metric is not ProbeMetric.PPSP
    gates = layer_gates(model, shape, policy, static=static)
    settings = replace(settings_of(shape, policy), probe_free=probe_free)
    with torch.no_grad():
        blocks, names = _blocks(model, gates, policy, history, settings)
        gated = GatedModel(model, blocks, names, rope_tables(model, history.max_len))
    return gated.eval()


def initial_state(gated: GatedModel, history: History) -> list[torch.Tensor]:
    """The history tensors ``gated`` takes, in its input order."""
    state = []
    for name in gated.history_names:
        _, layer, kind = name.split(".")
        block = getattr(history, kind)[int(layer)]
        assert block is not None
        state.append(block.sq.t().contiguous())
    return state


class ProbeRunner:
    """Eager Probe Pruning that carries H across batches: ``run(input_ids) -> logits``."""

    def __init__(self, model: nn.Module, shape: ModelShape, policy: ProbePolicy,
                 history: History) -> None:
        self.gated = build_gated(model, shape, policy, history)
        self.state = initial_state(self.gated, history)
        self.max_len = history.max_len
        self.last_kept: list[torch.Tensor] = []

    def run(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} > history max_len "
                             f"{self.max_len}")
        logits: torch.Tensor
        with torch.no_grad():
            logits, self.state, self.last_kept = self.gated(input_ids, self.state)
        return logits
