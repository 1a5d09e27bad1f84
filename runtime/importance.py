"""Weight-magnitude importance for manual plans that give a count instead of indices.

- MLP channel k of layer l: L1(gate_proj row k) + L1(up_proj row k).
- Query head h of layer l: L1 of its head_dim rows of q_proj, plus the L1 of the k_proj
  and v_proj rows of its KV head h // group_size (so, within a KV group, heads are ranked by
  their q rows alone; across groups, the k/v weights count too).
Scores are computed lazily per (kind, layer) from the model as loaded (before pruning).
"""

from __future__ import annotations

from typing import Any

import torch

from prunec.compiler.ir import ModelShape
from prunec.compiler.manual import Importance


def channel_scores(mlp: Any) -> list[float]:
    gate, up = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()
    return (gate.abs().sum(dim=1) + up.abs().sum(dim=1)).double().tolist()  # type: ignore


def head_scores(attn: Any, shape: ModelShape) -> list[float]:
    d, g = shape.head_dim, shape.group_size
    q = attn.q_proj.weight.detach().abs().reshape(shape.n_heads, d, -1).sum(dim=(1, 2))
    k = attn.k_proj.weight.detach().abs().reshape(shape.n_kv_heads, d, -1).sum(dim=(1, 2))
    v = attn.v_proj.weight.detach().abs().reshape(shape.n_kv_heads, d, -1).sum(dim=(1, 2))
    kv = (k + v).repeat_interleave(g)
    return (q + kv).double().tolist()  # type: ignore[no-any-return]


def magnitude_importance(model: Any, shape: ModelShape) -> Importance:
    """The ``importance(kind, layer)`` callback of ``prunec.compiler.manual``."""
    layers = model.model.layers

    def importance(kind: str, layer: int) -> list[float]:
        with torch.no_grad():
            if kind == "channels":
                return channel_scores(layers[layer].mlp)
            return head_scores(layers[layer].self_attn, shape)

    return importance
