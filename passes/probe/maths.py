"""The arithmetic of Probe Pruning (docs/algorithms.md §2), as small pure functions on tensors.

Everything here is shape-generic and traceable by ``torch.export`` (no data-dependent shapes,
no Python branching on tensor values), so the same code runs eagerly and inside the exported
ONNX graph. Conventions:
- counts derived from a dynamic dimension (probe positions, probe samples) are
  ``prunec.compiler.budget.ceil_count`` with symbolic min/max (exact integer ceilings);
- probe positions are returned in ascending order (causal attention among probe tokens is
  ordered by position); probe samples in score order (only their mean is used);
- fusion: ``w = P / (P + H + 1e-6)``, ``S = (1 - w) H + w P``, summed over probe positions
  (``P`` and ``H`` are ``[C, t]``: channels by positions, the layout of the gated history);
- PPsp: MLP ``I_k = S_k * sqrt(sum_i W_down[i, k]^4)``; head ``I_h = sqrt(sum_{c in h}
  S_c^2 * sum_i W_o[i, c]^4)`` (one L2 norm over output rows and the head's columns);
- kept counts and the per-layer ratio are torch-free rules: ``prunec.compiler.budget``.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from prunec.compiler.budget import ceil_count

FUSION_EPS = 1e-6
SYM_MIN_MAX = (torch.sym_min, torch.sym_max)  # count clamps that stay symbolic when traced


def probe_positions(h: torch.Tensor, token_frac: Fraction) -> torch.Tensor:
    """Top ``ceil(f*T)`` (>= 2) positions of ``h [B, T, D]`` by L2 over batch and hidden,
    ascending."""
    norms = h.pow(2).sum(dim=(0, 2)).sqrt()
    k = ceil_count(h.shape[1], token_frac, 2, SYM_MIN_MAX)
    return torch.sort(torch.topk(norms, k).indices).values


def probe_samples(h_pos: torch.Tensor, sample_frac: Fraction) -> torch.Tensor:
    """Top ``ceil(f*B)`` (>= 1) samples of ``h_pos [B, t, D]`` (already at the probe
    positions) by L2 over positions and hidden."""
    norms = h_pos.pow(2).sum(dim=(1, 2)).sqrt()
    k = ceil_count(h_pos.shape[0], sample_frac, 1, SYM_MIN_MAX)
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
    """PPsp head importance: L2 of ``S_c * W_o[:, c]^2`` over rows and the head's columns
    (``s`` ``[..., C]``: any leading batch dims)."""
    per_column = s.pow(2) * o_pow4
    return per_column.reshape(*per_column.shape[:-1], -1, head_dim).sum(dim=-1).sqrt()


def ema_update(old: torch.Tensor, batch_sq: torch.Tensor, momentum: float) -> torch.Tensor:
    """``H <- m H + (1 - m) mean_over_batch(x^2)`` (``batch_sq`` is already the mean)."""
    return momentum * old + (1.0 - momentum) * batch_sq
