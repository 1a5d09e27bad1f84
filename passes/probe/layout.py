"""How a probe policy lays out over a (possibly statically pruned) HF decoder of any family
of ``compiler.families``' probe column.

One ``BlockGate`` per attention / MLP block that exists: its present width (query heads or
MLP channels, after any static plan), how many stay per batch, and how they are chosen:
- ``DYNAMIC``: Probe Pruning (PPsp scores, or full-batch probing), recomputed per batch;
- ``STATIC``: a fixed kept set computed once from calibration (wanda-sp / flap baselines);
- ``DENSE``: not pruned (skipped layers, or rounding kept the whole width).
Removed blocks (``ZeroAttention`` / ``ZeroMLP`` from ``apply_plan_``) have no gate (None).
The per-layer ratio is ``round(L / (L - skipped) * r, 2)`` where ``skipped`` counts the
policy's skipped layers (docs/algorithms.md §2, generalised from "first 3").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunec.compiler.budget import kept_channels, kept_heads, layer_ratio
from prunec.compiler.ir import ModelShape, ProbePolicy, ProbeTarget
from prunec.passes.reference import ZeroAttention, ZeroMLP, decoder_layers


class GateKind(enum.Enum):
    DENSE = "dense"
    DYNAMIC = "dynamic"
    STATIC = "static"


@dataclass(frozen=True)
class BlockGate:
    width: int  # heads (attention) or channels (MLP) present in the block
    keep: int  # kept per batch (== width when DENSE)
    kind: GateKind


@dataclass(frozen=True)
class LayerGate:
    index: int
    ratio: float  # the per-layer ratio applied (0 for skipped layers)
    attn: BlockGate | None  # None: block removed by a static plan
    mlp: BlockGate | None


def skipped_layers(policy: ProbePolicy, n_layers: int) -> frozenset[int]:
    """Layers the policy never prunes."""
    return frozenset(i for sel in policy.skip for i in sel.resolve(n_layers))


def local_heads(attn: Any, shape: ModelShape) -> tuple[int, int]:
    """(query heads, kv heads) present in an attention module (after static pruning): o_proj's
    inputs and the module's own ``num_key_value_groups`` (which ``apply_plan_`` keeps true),
    so separate and fused (Phi-3) q/k/v read alike."""
    heads = attn.o_proj.weight.shape[1] // shape.head_dim
    return heads, heads // attn.num_key_value_groups


def _gate(width: int, keep: int, pruned: bool, static: bool) -> BlockGate:
    if not pruned or keep >= width:
        return BlockGate(width, width, GateKind.DENSE)
    return BlockGate(width, keep, GateKind.STATIC if static else GateKind.DYNAMIC)


def layer_gates(model: nn.Module, shape: ModelShape, policy: ProbePolicy,
                static: bool = False) -> tuple[LayerGate, ...]:
    """The gate of every block of ``model`` under ``policy``."""
    skipped = skipped_layers(policy, shape.n_layers)
    r = layer_ratio(policy.ratio, shape.n_layers, len(skipped))
    gates = []
    for i, layer in enumerate(decoder_layers(model)):
        ri = 0.0 if i in skipped else r
        attn = mlp = None
        if not isinstance(layer.self_attn, ZeroAttention):
            w = local_heads(layer.self_attn, shape)[0]
            on = ProbeTarget.HEADS in policy.targets and ri > 0
            attn = _gate(w, kept_heads(w, ri), on, static)
        if not isinstance(layer.mlp, ZeroMLP):
            w = layer.mlp.down_proj.weight.shape[1]
            on = ProbeTarget.MLP in policy.targets and ri > 0
            mlp = _gate(w, kept_channels(w, ri, policy.round_to), on, static)
        gates.append(LayerGate(i, ri, attn, mlp))
    return tuple(gates)
