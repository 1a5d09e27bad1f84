"""Greedy structure search scored by calibration perplexity: MultiPruner and BlockPruner.

Algorithm (docs/algorithms.md §1): stages in a fixed order, each a loop of steps; a step
scores every candidate (one layer changed on top of the committed plan) and commits the one
with the lowest perplexity (ties: the earlier candidate in layer order, attention before MLP).
- blocks: remove a remaining attention or MLP block of an unprotected layer;
- mlp: shrink one layer's MLP by ``compiler.budget.mlp_step`` channels (width stays > 0);
- heads: drop ``compiler.budget.head_step`` whole KV groups of one layer (its query heads and its k/v
  rows; at least one group stays). Whole groups keep the plan's GQA invariant and cut k/v too.
Within a layer, width cuts drop the weakest channels / KV groups under the reorder's
``importance``: ``magnitude`` (the paper; ``importance.mlp_magnitude`` / summed
``head_magnitude``) or ``wanda-sp`` (prunec's activation-aware option: the wanda-sp column
scores of down_proj / o_proj from the dense model's inputs on the score dataset, a KV group
scored by the sum over its query heads); without reorder they drop the last ones in the
original order. Either way the order is fixed before the search (deterministic).
Stopping: for a ``params`` target, stage s runs while the removed parameters are below
(d0 + ... + ds) * goal (MultiPruner: d = distribution, default 44:52:4; BlockPruner: blocks
only, d = 1:0:0); for per-dimension targets, while the removed blocks / channels / heads are
below ratio * (2L / L*intermediate / L*heads). A stage without candidates ends early.
The search is deterministic given the committed plan, so a run resumed from a saved state
(``resume.py``) reaches the same final plan. With ``MethodOptions.workers`` > 1 (or a Ray
address) a step's candidates are scored on Ray actors (``distributed.py``); the loop, the
order and the selection stay here, so the plan is the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from prunec.compiler import budget
from prunec.compiler.ir import ModelShape, StaticMethod, StaticPrune, WidthImportance
from prunec.compiler.plan import Decision, LayerPlan, Plan
from prunec.passes.methods import distributed, importance, resume
from prunec.passes.methods.evaluator import Driver, Engine, FastEngine, ReferenceEngine
from prunec.passes.methods.resume import SearchState
from prunec.passes.methods.types import (
    MethodOptions,
    MethodResult,
    ProgressEvent,
    SearchStats,
    StepScore,
    emit,
)
from prunec.passes.reference import decoder_layers

STAGES = ("blocks", "mlp", "heads")


@dataclass(frozen=True)
class Orders:
    """Per layer: MLP channels and KV groups, strongest first (the cut takes the tail)."""

    channels: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[int, ...], ...]


def width_orders(static: StaticPrune, model: nn.Module, shape: ModelShape,
                 calib: torch.Tensor, batch_size: int) -> Orders:
    """The per-layer cut order for ``static`` (see the module docstring)."""
    if not static.reorder:
        return Orders(((tuple(range(shape.intermediate)),) * shape.n_layers),
                      ((tuple(range(shape.n_kv_heads)),) * shape.n_layers))
    layers = decoder_layers(model)
    if static.importance is WidthImportance.WANDA_SP:
        stats = importance.collect_stats(model, calib, batch_size)
        scores = [importance.activation_scores(layer, st, shape, importance.wanda_sp_columns)
                  for layer, st in zip(layers, stats)]
    else:
        scores = [(importance.mlp_magnitude(layer), importance.head_magnitude(layer, shape))
                  for layer in layers]
    return Orders(tuple(_descending(c) for c, _ in scores),
                  tuple(_descending(h.view(shape.n_kv_heads, -1).sum(1)) for _, h in scores))


def _descending(scores: torch.Tensor) -> tuple[int, ...]:
    return tuple(sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j)))


@dataclass(frozen=True)
class Candidate:
    layer: LayerPlan
    action: str


def candidates(stage: str, plan: Plan, static: StaticPrune, shape: ModelShape,
               orders: Orders) -> list[Candidate]:
    out: list[Candidate] = []
    for i in budget.prunable_layers(static, shape):
        lp = plan.layers[i]
        if stage == "blocks":
            out += _block_candidates(lp)
        elif stage == "mlp" and not lp.mlp_removed:
            out += _mlp_candidate(lp, budget.mlp_step(static, shape), orders.channels[i], shape)
        elif stage == "heads" and not lp.attn_removed:
            out += _head_candidate(lp, budget.head_step(static), orders.groups[i], shape)
    return out


def _block_candidates(lp: LayerPlan) -> list[Candidate]:
    out = []
    if not lp.attn_removed:
        out.append(Candidate(replace(lp, attn_removed=True, kept_heads=None), "remove attn"))
    if not lp.mlp_removed:
        out.append(Candidate(replace(lp, mlp_removed=True, kept_channels=None), "remove mlp"))
    return out


def _mlp_candidate(lp: LayerPlan, step: int, order: tuple[int, ...],
                   shape: ModelShape) -> list[Candidate]:
    width = shape.intermediate if lp.kept_channels is None else len(lp.kept_channels)
    if width - step <= 0:
        return []
    kept = tuple(sorted(order[:width - step]))
    return [Candidate(replace(lp, kept_channels=kept), f"mlp -{step} channels ({len(kept)} kept)")]


def _head_candidate(lp: LayerPlan, step: int, order: tuple[int, ...],
                    shape: ModelShape) -> list[Candidate]:
    groups = len(lp.kv_groups_kept(shape))
    if groups - step <= 0:
        return []
    g = shape.group_size
    kept = tuple(sorted(kv * g + j for kv in order[:groups - step] for j in range(g)))
    return [Candidate(replace(lp, kept_heads=kept),
                      f"heads -{step} KV group{'s' if step > 1 else ''} ({len(kept)} kept)")]


@dataclass(frozen=True)
class Limits:
    """Per stage: the (kind, amount) the stage runs until; kind is params/blocks/channels/heads."""

    stages: tuple[tuple[str, str, float], ...]


def stage_limits(static: StaticPrune, shape: ModelShape) -> Limits:
    goal = budget.params_goal(static, shape)
    if static.method is StaticMethod.BLOCKPRUNER:
        shares = (1.0, 0.0, 0.0)
    elif static.distribution is not None:
        d = static.distribution
        shares = (d.blocks, d.mlp, d.heads)
    else:
        shares = budget.DEFAULT_DISTRIBUTION
    if goal is not None:
        out: list[tuple[str, str, float]] = []
        acc = 0.0
        for stage, share in zip(STAGES, shares):
            acc += share
            if share > 0:
                out.append((stage, "params", acc * goal))
        if out:
            out[-1] = (out[-1][0], "params", float(goal))
        return Limits(tuple(out))
    t, L = static.target, shape.n_layers
    return Limits(tuple(x for x in (
        ("blocks", "blocks", (t.blocks or 0.0) * 2 * L),
        ("mlp", "channels", (t.mlp or 0.0) * L * shape.intermediate),
        ("heads", "heads", (t.heads or 0.0) * L * shape.n_heads)) if x[2] > 0
        and (static.method is StaticMethod.MULTIPRUNER or x[0] == "blocks")))


def removed(kind: str, plan: Plan, shape: ModelShape) -> float:
    count: float
    if kind == "params":
        count = budget.removed_params(shape, plan)
        return count
    if kind == "blocks":
        count = sum(lp.attn_removed + lp.mlp_removed for lp in plan.layers)
        return count
    if kind == "channels":
        count = sum(shape.intermediate if lp.mlp_removed else
                    shape.intermediate - len(lp.kept_channels or range(shape.intermediate))
                    for lp in plan.layers)
        return count
    count = sum(shape.n_heads if lp.attn_removed else
                shape.n_heads - len(lp.kept_heads or range(shape.n_heads)) for lp in plan.layers)
    return count


def run_search(static: StaticPrune, model: nn.Module, shape: ModelShape,
               calib: torch.Tensor | None, options: MethodOptions,
               hashes: Mapping[str, str] | None = None) -> MethodResult:
    assert calib is not None, "checks require a score dataset for a search (P0212)"
    key = resume.fingerprint(static, hashes or {}, options.mode)
    state = resume.load(options.resume_path, key, static) or SearchState(
        Plan.dense(shape, static.method.value), [], None)
    engine = open_engine(options, model, shape, calib, state.plan)
    try:
        return _search(static, model, shape, calib, options, engine, state, key)
    finally:
        engine.close()


def _search(static: StaticPrune, model: nn.Module, shape: ModelShape, calib: torch.Tensor,
            options: MethodOptions, engine: Engine, state: SearchState,
            key: str) -> MethodResult:
    started, base_forwards = time.perf_counter(), state.layer_forwards
    base_evals, base_wall = state.evaluations, state.wall_s
    score = engine.current()
    if state.dense_score is None:
        state.dense_score = score
    orders = width_orders(static, model, shape, calib, options.batch_size)

    def sync() -> None:
        state.layer_forwards = base_forwards + engine.counters.layer_forwards
        state.evaluations = base_evals + engine.counters.evaluations
        state.wall_s = base_wall + time.perf_counter() - started

    for stage, kind, limit in stage_limits(static, shape).stages:
        while (done := removed(kind, state.plan, shape)) < limit - 1e-9:
            emit(options, ProgressEvent(f"{static.method.value} {stage} stage ({kind})",
                                        int(done), int(limit)))
            if not search_step(stage, static, shape, orders, engine, state, options):
                break
            sync()
            resume.save(options.resume_path, key, state)
            if options.on_step is not None:
                options.on_step(len(state.plan.decisions))
    sync()
    stats = SearchStats(state.layer_forwards, state.evaluations, state.wall_s,
                        state.dense_score, tuple(state.trajectory), options.mode)
    return MethodResult(state.plan, stats)


def open_engine(options: MethodOptions, model: nn.Module, shape: ModelShape,
                calib: torch.Tensor, plan: Plan) -> Engine:
    """The Ray engine when ``options`` ask for workers, else the in-process one."""
    if distributed.wanted(options.workers, options.ray_address):
        return distributed.RayEngine(model, shape, calib, plan, options)
    return make_engine(options, model, shape, Driver(model, calib, options.batch_size), plan)


def make_engine(options: MethodOptions, model: nn.Module, shape: ModelShape, driver: Driver,
                plan: Plan) -> FastEngine | ReferenceEngine:
    if options.mode == "reference":
        return ReferenceEngine(model, shape, driver, plan)
    if options.mode != "fast":
        raise ValueError(f"unknown evaluation mode {options.mode!r} (fast or reference)")
    return FastEngine(model, shape, driver, plan, options.cache_mb)


def search_step(stage: str, static: StaticPrune, shape: ModelShape, orders: Orders,
                engine: Engine, state: SearchState, options: MethodOptions) -> bool:
    """Score every candidate of ``stage``, commit the best; False when there is none."""
    cands = candidates(stage, state.plan, static, shape, orders)
    if not cands:
        return False
    step = len(state.plan.decisions)
    task = f"{static.method.value} {stage} step {step + 1}"
    best: tuple[float, int] | None = None
    scores = engine.score_all([c.layer for c in cands])
    for n, (cand, s) in enumerate(zip(cands, scores)):
        if best is None or (s, n) < best:
            best = (s, n)
        emit(options, ProgressEvent(task, n + 1, len(cands), best[0], cand.action))
    assert best is not None
    win = cands[best[1]]
    engine.commit(win.layer)
    decision = Decision(step, stage, win.layer.index, win.action, best[0],
                        static.target.span.line)
    state.plan = state.plan.with_layer(win.layer).with_decision(decision)
    state.trajectory.append(StepScore(step, stage, best[0],
                                      shape_params(shape, state.plan)))
    return True


def shape_params(shape: ModelShape, plan: Plan) -> int:
    return budget.dense_params(shape) - budget.removed_params(shape, plan)
