"""Importance scorers for MLP channels and query heads: separate callables, one per metric.

Maths (per decoder layer; W = down_proj for channels, o_proj for heads, W[:, k] a column;
x_k the k-th input of that projection over all calibration tokens):
- magnitude (MultiPruner reorder, and the ranking of ``keep N`` in a manual plan): channel k
  -> L1(gate row k) + L1(up row k); head h -> (L1 of its q rows + L1 of its KV head's k and
  v rows) / head_dim (within a KV group heads rank by their q rows alone);
- wanda-sp: column k -> sum_i |W_ik| * sqrt(mean x_k^2);
- flap (WIFV): column k -> var(x_k) * sum_i W_ik^2 (the activation's fluctuation);
a head's score from column scores is the sum over its head_dim columns. Higher = keep.
Activation statistics are float64 sums over every calibration token of the DENSE model,
streamed: each forward pre-hook adds one batch's sums (never the activations themselves).
They accumulate on the model's device (``passes.device``); statistics and scores leave
this module as float64 CPU tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunec.compiler.ir import ModelShape
from prunec.compiler.manual import Importance
from prunec.passes.device import on_model
from prunec.passes.reference import decoder_layers, projection_weight


@dataclass(frozen=True)
class ChannelStats:
    """Per-input-channel statistics of one projection's input over the calibration tokens."""

    mean: torch.Tensor
    sq_mean: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        return (self.sq_mean - self.mean**2).clamp_min(0.0)


@dataclass(frozen=True)
class LayerStats:
    mlp: ChannelStats  # input of down_proj
    attn: ChannelStats  # input of o_proj


def mlp_magnitude(layer: Any) -> torch.Tensor:
    out: torch.Tensor = (projection_weight(layer, "gate_proj").detach().abs().sum(1)
                         + projection_weight(layer, "up_proj").detach().abs().sum(1)).double()
    return out.cpu()


def _row_l1(layer: Any, name: str, units: int) -> torch.Tensor:
    return projection_weight(layer, name).detach().abs().double().sum(1).view(units, -1).sum(1)


def head_magnitude(layer: Any, shape: ModelShape) -> torch.Tensor:
    d, g = shape.head_dim, shape.group_size
    q = _row_l1(layer, "q_proj", shape.n_heads)
    k = _row_l1(layer, "k_proj", shape.n_kv_heads)
    v = _row_l1(layer, "v_proj", shape.n_kv_heads)
    out: torch.Tensor = (q + (k + v).repeat_interleave(g)) / d
    return out.cpu()


def magnitude_importance(model: Any, shape: ModelShape) -> Importance:
    """The ``importance(kind, layer)`` callback of ``prunec.compiler.manual`` (manual plans
    that keep a count): the magnitude scores above, of the weights as loaded."""
    layers = decoder_layers(model)

    def importance(kind: str, layer: int) -> list[float]:
        with torch.no_grad():
            if kind == "channels":
                scores = mlp_magnitude(layers[layer])
            else:
                scores = head_magnitude(layers[layer], shape)
        return [float(v) for v in scores]

    return importance


def heads_from_columns(columns: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    return columns.view(shape.n_heads, shape.head_dim).sum(1)


def wanda_sp_columns(weight: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    return weight.detach().abs().double().sum(0).cpu() * stats.sq_mean.sqrt()


def flap_columns(weight: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    return stats.var * (weight.detach().double() ** 2).sum(0).cpu()


ColumnScorer = Callable[[torch.Tensor, ChannelStats], torch.Tensor]


def activation_scores(layer: Any, stats: LayerStats, shape: ModelShape,
                      scorer: ColumnScorer) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel scores, head scores) of one layer under an activation-aware scorer."""
    channels = scorer(layer.mlp.down_proj.weight, stats.mlp)
    heads = heads_from_columns(scorer(layer.self_attn.o_proj.weight, stats.attn), shape)
    return channels, heads


class _Accumulator:
    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def __call__(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
        s, q = x.sum(0), (x * x).sum(0)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        self.count += x.shape[0]

    def stats(self) -> ChannelStats:
        assert self.total is not None and self.squares is not None
        return ChannelStats((self.total / self.count).cpu(), (self.squares / self.count).cpu())


@torch.no_grad()
def collect_stats(model: Any, calib: torch.Tensor, batch_size: int) -> list[LayerStats]:
    """Input statistics of every layer's down_proj and o_proj over ``calib`` (dense model)."""
    accs: list[tuple[_Accumulator, _Accumulator]] = []
    handles = []
    for layer in decoder_layers(model):
        pair = (_Accumulator(), _Accumulator())
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(pair[0]))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pair[1]))
        accs.append(pair)
    try:
        for start in range(0, calib.shape[0], batch_size):
            model.model(on_model(model, calib[start:start + batch_size]))
    finally:
        for h in handles:
            h.remove()
    return [LayerStats(m.stats(), a.stats()) for m, a in accs]
