"""The arithmetic of Probe Pruning (algorithms.md §2), as small pure functions on tensors.

Everything here is shape-generic and traceable by ``torch.export`` (no data-dependent shapes,
no Python branching on tensor values), so the same code runs eagerly and inside the exported
ONNX graph. Conventions:
- counts derived from a dynamic dimension (probe positions, probe samples) use exact integer
  ceilings of rational fractions: ``ceil(f * n) = (n * num + den - 1) // den``;
- probe positions are returned in ascending order (causal attention among probe tokens is
  ordered by position); probe samples in score order (only their mean is used);
- fusion: ``w = P / (P + H + 1e-6)``, ``S = (1 - w) H + w P``, summed over probe positions
  (``P`` and ``H`` are ``[C, t]``: channels by positions, the layout of the gated history);
- PPsp: MLP ``I_k = S_k * sqrt(sum_i W_down[i, k]^4)``; head ``I_h = sqrt(sum_{c in h}
  S_c^2 * sum_i W_o[i, c]^4)`` (one L2 norm over output rows and the head's columns);
- kept counts: MLP ``round_to * floor((1 - r) * width / round_to + 1/2)`` clipped to
  ``[min(round_to, width), width]``; heads ``width - int(r * width)``;
- per-layer ratio: ``round(L / (L - skipped) * r, 2)`` on the pruned layers, capped at 1.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

FUSION_EPS = 1e-6


def as_fraction(f: float) -> Fraction:
    """A spec fraction as an exact rational (denominator <= 10_000)."""
    return Fraction(f).limit_denominator(10_000)


def ceil_count(n: int, frac: Fraction, minimum: int) -> int:
    """``min(n, max(minimum, ceil(frac * n)))`` in integer arithmetic (SymInt friendly)."""
    c = (n * frac.numerator + frac.denominator - 1) // frac.denominator
    return torch.sym_min(n, torch.sym_max(minimum, c))  # type: ignore[no-any-return, no-untyped-call]


def probe_positions(h: torch.Tensor, token_frac: Fraction) -> torch.Tensor:
    """Top ``ceil(f*T)`` (>= 2) positions of ``h [B, T, D]`` by L2 over batch and hidden,
    ascending."""
    norms = h.pow(2).sum(dim=(0, 2)).sqrt()
    k = ceil_count(h.shape[1], token_frac, 2)
    return torch.sort(torch.topk(norms, k).indices).values


def probe_samples(h_pos: torch.Tensor, sample_frac: Fraction) -> torch.Tensor:
    """Top ``ceil(f*B)`` (>= 1) samples of ``h_pos [B, t, D]`` (already at the probe
    positions) by L2 over positions and hidden."""
    norms = h_pos.pow(2).sum(dim=(1, 2)).sqrt()
    k = ceil_count(h_pos.shape[0], sample_frac, 1)
    return torch.topk(norms, k).indices


def fuse(probe_sq: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """``S_k = sum_t (1 - w) H + w P`` with ``w = P / (P + H + eps)``; inputs ``[C, t]``."""
    w = probe_sq / (probe_sq + history + FUSION_EPS)
    return ((1.0 - w) * history + w * probe_sq).sum(dim=-1)


def column_pow4(weight: torch.Tensor) -> torch.Tensor:
    """``sum_i W[i, c]^4`` per input column ``c`` of a Linear weight ``[out, in]``."""
    return weight.pow(4).sum(dim=0)


def mlp_importance(s: torch.Tensor, down_pow4: torch.Tensor) -> torch.Tensor:
    """PPsp channel importance ``S_k * sqrt(sum_i W_down[i,k]^4)``."""
    return s * down_pow4.sqrt()


def head_importance(s: torch.Tensor, o_pow4: torch.Tensor, head_dim: int) -> torch.Tensor:
    """PPsp head importance: L2 of ``S_c * W_o[:, c]^2`` over rows and the head's columns."""
    return (s.pow(2) * o_pow4).view(-1, head_dim).sum(dim=-1).sqrt()


def ema_update(old: torch.Tensor, batch_sq: torch.Tensor, momentum: float) -> torch.Tensor:
    """``H <- m H + (1 - m) mean_over_batch(x^2)`` (``batch_sq`` is already the mean)."""
    return momentum * old + (1.0 - momentum) * batch_sq


def kept_channels(width: int, ratio: float, round_to: int) -> int:
    """MLP channels kept: ``(1 - r) * width`` rounded (half up) to a multiple of ``round_to``,
    at least ``min(round_to, width)`` and at most ``width``."""
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    kept = round_to * math.floor((1.0 - ratio) * width / round_to + 0.5)
    return max(min(round_to, width), min(width, kept))


def kept_heads(width: int, ratio: float) -> int:
    """Query heads kept: ``width - int(r * width)``, at least 1."""
    return max(1, width - int(ratio * width))


def layer_ratio(ratio: float, n_layers: int, n_skipped: int) -> float:
    """The per-layer ratio on pruned layers so that the model-wide ratio is ``ratio``."""
    if n_skipped >= n_layers:
        return 0.0
    return min(1.0, round(n_layers / (n_layers - n_skipped) * ratio, 2))
