"""Static baselines of the Probe Pruning paper, computed once from calibration statistics.

Both use the calibration history (``BlockHistory``): ``E[x^2]_c`` = mean over the first
``calib_len`` rows of ``sq`` (every calibration sequence has that length, so this is the mean
over calibration tokens) and ``mean_c`` = ``E[x]_c``; W is o_proj / down_proj ``[out, in]``.
- wanda-sp: ``score_c = sum_i |W_ic| * sqrt(E[x^2]_c)``;
- flap: ``score_c = Var[x_c] * sum_i W_ic^2`` with ``Var = E[x^2] - E[x]^2``, and the removed
  channels' mean contribution ``W[:, removed] @ E[x]_removed`` added as an output bias.
A head's score is the sum over its head_dim columns. The kept set is the ``keep`` best units
(ascending indices), at the same per-layer counts as Probe Pruning.
"""

from __future__ import annotations

import torch

from prunec.compiler.ir import ProbeMetric
from prunec.passes.probe.history import BlockHistory


def column_scores(metric: ProbeMetric, weight: torch.Tensor, stats: BlockHistory,
                  calib_len: int) -> torch.Tensor:
    """Per input column of ``weight`` (o_proj / down_proj), the baseline's score."""
    w = weight.detach().double()
    sq: torch.Tensor = stats.sq[:calib_len].double().mean(0)
    if metric is ProbeMetric.WANDA_SP:
        return w.abs().sum(0) * sq.sqrt()
    if metric is ProbeMetric.FLAP:
        var: torch.Tensor = (sq - stats.mean.double().pow(2)).clamp_min(0.0)
        return var * w.pow(2).sum(0)
    raise ValueError(f"{metric} is not a static metric")


def static_choice(metric: ProbeMetric, weight: torch.Tensor, stats: BlockHistory,
                  calib_len: int, unit: int, keep: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kept unit indices ascending, FLAP output bias or None); ``unit`` = columns per unit
    (head_dim for heads, 1 for MLP channels)."""
    scores = column_scores(metric, weight, stats, calib_len).view(-1, unit).sum(-1)
    idx = torch.sort(torch.topk(scores, keep).indices).values
    if metric is not ProbeMetric.FLAP:
        return idx, None
    removed = torch.ones(scores.shape[0], dtype=torch.bool)
    removed[idx] = False
    cols = removed.repeat_interleave(unit)
    w = weight.detach().double()
    bias = w[:, cols] @ stats.mean.double()[cols]
    return idx, bias.to(weight.dtype)
