"""One-shot width pruning: ``magnitude``, ``wanda-sp`` and ``flap`` (no search, no blocks).

Rule: score every MLP channel and query head once (``importance.py``), decide how many to
keep per layer, keep the highest-scored ones. Counts:
- heads are removed GQA-balanced: every KV group keeps the same ``k`` query heads (its best
  ``k``), so k/v projections stay whole; ``k = round(group_size * (1 - r))`` clamped to
  [1, group_size], where r is the width ratio (the ``heads`` ratio, or for a ``params`` target
  the fraction of the prunable layers' parameters to remove, lowered while heads alone would
  overshoot);
- MLP channels are removed in units of ``compiler.budget.channel_unit``; for a ``params`` target the
  number of units is what the heads left over, rounded to the nearest unit, spread evenly
  (the first layers by index take the remainder), so ``param_count`` lands within one unit
  of one layer (3 * hidden * unit parameters) of the target;
- scope ``global`` ranks channels (and per-group head slices) across layers instead of
  spreading evenly: raw scores for magnitude and wanda-sp, per-layer standardised scores
  for flap (as in FLAP); the totals are those of the per-layer scope;
- FLAP's output biases (W[:, removed] @ mean(x[removed])) are the ``bias`` reconstruction,
  flap's default, applied after every method by ``compute_plan`` (``reconstruct.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from prunec.compiler import budget
from prunec.compiler.ir import ModelShape, Scope, StaticMethod, StaticPrune
from prunec.compiler.plan import Decision, LayerPlan, Plan
from prunec.passes.methods import importance
from prunec.passes.methods.types import MethodOptions, MethodResult, SearchStats
from prunec.passes.reference import decoder_layers

Widths = dict[int, tuple[int, int]]  # layer -> (channels kept, heads kept per KV group)
Scores = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (channel, head) scores


def run_oneshot(static: StaticPrune, model: nn.Module, shape: ModelShape,
                calib: torch.Tensor | None, options: MethodOptions) -> MethodResult:
    start = time.perf_counter()
    assert not static.target.blocks, "checks reject a blocks target on a width method (P0211)"
    stats = _stats(static, model, calib, options)
    scores = layer_scores(static.method, model, shape, stats)
    layers = budget.prunable_layers(static, shape)
    widths = target_widths(static, shape, layers)
    if static.scope is Scope.GLOBAL:
        widths = globalise(widths, scores, shape, static.method is StaticMethod.FLAP)
    plan = widths_plan(static, shape, widths, scores)
    wall = time.perf_counter() - start
    return MethodResult(plan, SearchStats(wall_s=wall, mode="one-shot"))


def _stats(static: StaticPrune, model: nn.Module, calib: torch.Tensor | None,
           options: MethodOptions) -> list[importance.LayerStats] | None:
    if static.method is StaticMethod.MAGNITUDE:
        return None
    assert calib is not None, "checks require a score dataset for this method (P0212)"
    return importance.collect_stats(model, calib, options.batch_size)


def layer_scores(method: StaticMethod, model: nn.Module, shape: ModelShape,
                 stats: Sequence[importance.LayerStats] | None) -> Scores:
    out: Scores = []
    for i, layer in enumerate(decoder_layers(model)):
        if method is StaticMethod.MAGNITUDE or stats is None:
            out.append((importance.mlp_magnitude(layer), importance.head_magnitude(layer, shape)))
            continue
        scorer = (importance.flap_columns if method is StaticMethod.FLAP
                  else importance.wanda_sp_columns)
        out.append(importance.activation_scores(layer, stats[i], shape, scorer))
    return out


def target_widths(static: StaticPrune, shape: ModelShape, layers: Sequence[int]) -> Widths:
    g, unit = shape.group_size, budget.channel_unit(shape)
    goal = budget.params_goal(static, shape)
    if goal is None:
        k = _heads_kept(g, static.target.heads or 0.0)
        cut = round((static.target.mlp or 0.0) * shape.intermediate / unit) * unit
        kept = max(unit, shape.intermediate - cut) if cut else shape.intermediate
        return {i: (kept, k) for i in layers}
    return _params_widths(shape, layers, goal, unit)


def _heads_kept(group: int, ratio: float) -> int:
    return min(group, max(1, round(group * (1.0 - ratio))))


def _params_widths(shape: ModelShape, layers: Sequence[int], goal: int, unit: int) -> Widths:
    h, d, g = shape.hidden, shape.head_dim, shape.group_size
    per_layer = budget.dense_params(shape) - budget.embedding_params(shape)
    per_layer //= shape.n_layers
    frac = goal / max(1, per_layer * len(layers))
    k = _heads_kept(g, frac)
    while k < g and len(layers) * 2 * h * d * (g - k) * shape.n_kv_heads > goal:
        k += 1
    mlp_goal = goal - len(layers) * 2 * h * d * (g - k) * shape.n_kv_heads
    max_units = shape.intermediate // unit - 1
    units = min(max(0, round(mlp_goal / (3 * h * unit))), max_units * len(layers))
    base, extra = divmod(units, max(1, len(layers)))
    return {i: (shape.intermediate - (base + (n < extra)) * unit, k)
            for n, i in enumerate(layers)}


def globalise(widths: Widths, scores: Scores, shape: ModelShape, standardise: bool) -> Widths:
    """Same totals, spread by a global ranking instead of evenly."""
    layers = sorted(widths)
    unit = budget.channel_unit(shape)
    cut_units = sum((shape.intermediate - widths[i][0]) // unit for i in layers)
    cut_slices = sum(shape.group_size - widths[i][1] for i in layers)
    norm = _standardise if standardise else (lambda t: t)
    unit_costs = [(float(c), i) for i in layers
                  for c in _unit_scores(norm(scores[i][0]), unit)[:-1]]
    slice_costs = [(float(c), i) for i in layers
                   for c in _slice_scores(norm(scores[i][1]), shape)[:-1]]
    units = _count_lowest(unit_costs, cut_units)
    slices = _count_lowest(slice_costs, cut_slices)
    return {i: (shape.intermediate - units.get(i, 0) * unit, shape.group_size - slices.get(i, 0))
            for i in layers}


def _standardise(t: torch.Tensor) -> torch.Tensor:
    return (t - t.mean()) / (t.std() + 1e-12)


def _unit_scores(channel_scores: torch.Tensor, unit: int) -> list[float]:
    """Cumulative score lost by cutting the weakest unit, two units, ... (ascending)."""
    ordered = torch.sort(channel_scores).values
    n = len(ordered) // unit
    return [float(ordered[j * unit:(j + 1) * unit].sum()) for j in range(n)]


def _slice_scores(head_scores: torch.Tensor, shape: ModelShape) -> list[float]:
    per_group = torch.sort(head_scores.view(shape.n_kv_heads, shape.group_size), dim=1).values
    return [float(per_group[:, j].sum()) for j in range(shape.group_size)]


def _count_lowest(costs: list[tuple[float, int]], n: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, layer in sorted(costs)[:n]:
        counts[layer] = counts.get(layer, 0) + 1
    return counts


def keep_top(scores: torch.Tensor, n: int) -> tuple[int, ...]:
    """The ``n`` highest-scored indices, sorted; ties go to the lower index."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return tuple(sorted(order[:n]))


def keep_heads_balanced(head_scores: torch.Tensor, shape: ModelShape, k: int) -> tuple[int, ...]:
    g = shape.group_size
    kept: list[int] = []
    for kv in range(shape.n_kv_heads):
        kept += [kv * g + j for j in keep_top(head_scores[kv * g:(kv + 1) * g], k)]
    return tuple(sorted(kept))


def widths_plan(static: StaticPrune, shape: ModelShape, widths: Widths, scores: Scores) -> Plan:
    plan = Plan.dense(shape, static.method.value)
    for step, i in enumerate(sorted(widths)):
        channels, k = widths[i]
        lp = LayerPlan(
            i,
            kept_heads=None if k == shape.group_size else keep_heads_balanced(scores[i][1], shape, k),
            kept_channels=(None if channels == shape.intermediate
                           else keep_top(scores[i][0], channels)),
        )
        if lp == LayerPlan(i):
            continue
        action = (f"keep {channels}/{shape.intermediate} channels, "
                  f"{k * shape.n_kv_heads}/{shape.n_heads} heads")
        plan = plan.with_layer(lp).with_decision(
            Decision(step, "one-shot", i, action, None, static.target.span.line))
    return plan
