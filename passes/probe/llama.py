"""Building the gated forward from a (possibly statically pruned) HF Llama-style model
(Llama, Mistral, Qwen2; projection biases are read from the modules, whatever the config says).

``build_gated(model, shape, policy, history)`` copies the weights into a ``GatedLlama``
(``model.GatedBlock``s in residual order, removed blocks left out) whose history inputs are,
in order, the dynamic blocks named ``history.{layer}.attn`` / ``history.{layer}.mlp``
(layer order, attention before MLP), each ``[C, max_len]`` (channel rows, position
columns: the transpose of ``BlockHistory.sq``, so that kept channels are whole rows) with
C = heads*head_dim of the layer's o_proj input or its MLP channels. ``ProbeRunner`` is the
eager API that carries H from batch to batch (the reference the ONNX export is checked
against).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from prunec.compiler.budget import as_fraction
from prunec.compiler.ir import ModelShape, ProbeMetric, ProbeMode, ProbePolicy
from prunec.passes.probe.history import BlockHistory, History
from prunec.passes.probe.layout import BlockGate, GateKind, LayerGate, layer_gates
from prunec.passes.probe.model import GatedAttention, GatedBlock, GatedMLP, ProbeSettings, rms_norm
from prunec.passes.probe.static import static_choice
from prunec.passes.reference import ZeroAttention, decoder_layers


class GatedLlama(nn.Module):
    """Embedding -> gated blocks (residual) -> final norm -> lm_head."""

    embed: torch.Tensor
    lm_head: torch.Tensor | None
    final_norm: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, model: Any, blocks: list[GatedBlock], names: list[str],
                 max_len: int, eps: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.history_names = tuple(names)
        self.eps = eps
        inner = model.model
        self.register_buffer("embed", inner.embed_tokens.weight.detach().clone())
        self.tied = model.lm_head.weight is inner.embed_tokens.weight
        self.register_buffer("lm_head", None if self.tied else model.lm_head.weight.detach().clone())
        self.register_buffer("final_norm", inner.norm.weight.detach().clone())
        cos, sin = rope_tables(inner.rotary_emb, max_len)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def forward(self, input_ids: torch.Tensor, histories: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(logits, new histories in ``history_names`` order, kept indices likewise)."""
        t = input_ids.shape[1]
        h = torch.nn.functional.embedding(input_ids, self.embed)
        rope = (self.cos[:t], self.sin[:t])
        new: list[torch.Tensor] = []
        kept: list[torch.Tensor] = []
        for block in self.blocks:
            hist = histories[len(new)] if block.dynamic else None
            out, nh, idx = block(h, rope, hist)
            h = h + out
            if nh is not None and idx is not None:
                new.append(nh)
                kept.append(idx)
        return self.head_logits(h), new, kept

    def block_list(self) -> list[GatedBlock]:
        """The gated blocks in residual order (``self.blocks`` is typed as Modules)."""
        return [b for b in self.blocks if isinstance(b, GatedBlock)]

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and the (tied or own) LM head on the residual ``h [B, T, D]``."""
        head = self.embed if self.lm_head is None else self.lm_head
        return rms_norm(h, self.final_norm, self.eps) @ head.t()


def rope_tables(rotary: Any, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[max_len, head_dim]`` as HF's LlamaRotaryEmbedding computes them."""
    inv = rotary.inv_freq.detach().float()
    freqs = torch.arange(max_len, dtype=torch.float32).unsqueeze(1) * inv.unsqueeze(0)
    emb = torch.cat([freqs, freqs], dim=-1)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    return emb.cos() * scale, emb.sin() * scale


def settings_of(model: Any, shape: ModelShape, policy: ProbePolicy) -> ProbeSettings:
    return ProbeSettings(full_batch=policy.mode is ProbeMode.FULL_BATCH,
                         token_frac=as_fraction(policy.token_fraction),
                         sample_frac=as_fraction(policy.sample_fraction),
                         momentum=float(policy.momentum), eps=float(model.config.rms_norm_eps),
                         head_dim=shape.head_dim, compensate=policy.compensate)


def _check_supported(model: Any, max_len: int) -> None:
    """What the gated forward cannot express: a non-SiLU MLP, a sliding window (a Qwen2
    layer's own, else Mistral's config) shorter than ``max_len``. Projection biases are all
    supported (read from the modules by ``model.GatedBlock``)."""
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"probe gating supports SiLU MLPs, not {cfg.hidden_act}")
    for layer in decoder_layers(model):
        attn = layer.self_attn
        window = getattr(attn, "sliding_window", getattr(cfg, "sliding_window", None))
        if not isinstance(attn, ZeroAttention) and window is not None and int(window) < max_len:
            raise ValueError(f"probe gating has full causal attention: sliding window "
                             f"{window} < history max_len {max_len}")


def _static(policy: ProbePolicy, weight: torch.Tensor, stats: BlockHistory | None,
            history: History, unit: int, gate: BlockGate
            ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if gate.kind is not GateKind.STATIC:
        return None
    assert stats is not None
    return static_choice(policy.metric, weight, stats, history.calib_len, unit, gate.keep)


def _blocks(model: nn.Module, gates: tuple[LayerGate, ...], policy: ProbePolicy,
            history: History, settings: ProbeSettings) -> tuple[list[GatedBlock], list[str]]:
    blocks: list[GatedBlock] = []
    names: list[str] = []
    for layer, g in zip(decoder_layers(model), gates):
        if g.attn is not None:
            attn = layer.self_attn
            st = _static(policy, attn.o_proj.weight, history.attn[g.index], history,
                         settings.head_dim, g.attn)
            blocks.append(GatedAttention(attn, layer.input_layernorm.weight, g.attn, settings, st))
            names += [f"history.{g.index}.attn"] if blocks[-1].dynamic else []
        if g.mlp is not None:
            mlp = layer.mlp
            st = _static(policy, mlp.down_proj.weight, history.mlp[g.index], history, 1, g.mlp)
            blocks.append(GatedMLP(mlp, layer.post_attention_layernorm.weight, g.mlp, settings,
                                   st))
            names += [f"history.{g.index}.mlp"] if blocks[-1].dynamic else []
    return blocks, names


def build_gated(model: nn.Module, shape: ModelShape, policy: ProbePolicy,
                history: History, probe_free: bool = False) -> GatedLlama:
    """The gated forward of ``model`` under ``policy`` (static metrics give fixed masks).
    ``probe_free`` (benchmarks only) scores from H alone, to measure the probe's cost."""
    _check_supported(model, history.max_len)
    static = policy.metric is not ProbeMetric.PPSP
    gates = layer_gates(model, shape, policy, static=static)
    settings = replace(settings_of(model, shape, policy), probe_free=probe_free)
    with torch.no_grad():
        blocks, names = _blocks(model, gates, policy, history, settings)
        gated = GatedLlama(model, blocks, names, history.max_len, settings.eps)
    return gated.eval()


def initial_state(gated: GatedLlama, history: History) -> list[torch.Tensor]:
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
