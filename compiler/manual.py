"""Resolving a spec's manual ``plan { ... }`` block into a ``Plan`` (no torch here).

Rules, per action, applied in spec order to the layers its selector resolves to:
- ``RemoveBlock(attn|mlp)`` removes that residual block;
- ``KeepChannels`` with ``indices`` keeps exactly those MLP channels; with ``count`` keeps
  the ``count`` channels of highest importance (ties: lower index first);
- ``KeepHeads`` with ``indices`` keeps exactly those query heads (GQA: equal per kept KV
  group, checked by ``Plan.validate``); with ``count``, GQA-balanced: if ``count`` is a
  multiple of the KV-head count, each KV group keeps its ``count / n_kv`` most important
  query heads; else if it is a multiple of the group size, the ``count / group`` KV groups
  with the highest summed importance are kept whole; otherwise it is an error.
- Keeping everything (count = full width) leaves the layer dense (``kept_* = None``).
- One layer's attention (or MLP) may be named by at most one action: a second one, or a
  keep on a removed block, is an error naming both spec lines.
Importance comes from a callback ``importance(kind, layer) -> scores`` (kind "channels" or
"heads"; one score per channel / query head, higher = more important) that the runtime
computes from the weights (``prunec.passes.methods.importance``); it is only called for ``count``.
Every change is recorded as a ``Decision`` (stage "manual") carrying the action's spec line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import (
    BlockKind,
    KeepChannels,
    KeepHeads,
    ManualPlan,
    ModelShape,
    PlanAction,
    RemoveBlock,
)
from prunec.compiler.plan import Decision, LayerPlan, Plan

Importance = Callable[[str, int], Sequence[float]]


class ActionError(ValueError):
    """An action that cannot apply to a layer; ``code`` is its diagnostic code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error(code: str, message: str, span: Span, hint: str | None = None) -> Diagnostic:
    return Diagnostic.error(code, message, span, hint)


def top_indices(scores: Sequence[float], count: int) -> tuple[int, ...]:
    """The ``count`` highest-scoring indices, sorted (ties broken by lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return tuple(sorted(order[:count]))


def balanced_heads(scores: Sequence[float], count: int, shape: ModelShape) -> tuple[int, ...]:
    """``count`` query heads, GQA-balanced (see the module docstring); ValueError if impossible."""
    g, n_kv = shape.group_size, shape.n_kv_heads
    if count % n_kv == 0:
        per = count // n_kv
        kept: list[int] = []
        for kv in range(n_kv):
            local = top_indices(scores[kv * g:(kv + 1) * g], per)
            kept += [kv * g + i for i in local]
        return tuple(sorted(kept))
    if count % g == 0:
        sums = [sum(scores[kv * g:(kv + 1) * g]) for kv in range(n_kv)]
        groups = top_indices(sums, count // g)
        return tuple(kv * g + i for kv in groups for i in range(g))
    raise ActionError("P0206", f"cannot keep {count} of {shape.n_heads} heads evenly over "
                     f"{n_kv} KV groups of {g}: use a multiple of {n_kv} (same number per "
                     f"group) or of {g} (whole groups)")


def _kept(action: KeepChannels | KeepHeads, layer: int, shape: ModelShape,
          importance: Importance) -> tuple[int, ...] | None:
    is_heads = isinstance(action, KeepHeads)
    width = shape.n_heads if is_heads else shape.intermediate
    if action.indices is not None:
        kept = tuple(sorted(set(action.indices)))
        bad = [i for i in kept if not 0 <= i < width]
        if bad:
            raise ActionError("P0207", f"index {bad[0]} is out of range 0..{width - 1}")
    else:
        assert action.count is not None
        if not 0 < action.count <= width:
            raise ActionError("P0207", f"count {action.count} is out of range 1..{width} "
                             "(remove the block to keep nothing)")
        scores = importance("heads" if is_heads else "channels", layer)
        kept = (balanced_heads(scores, action.count, shape) if is_heads
                else top_indices(scores, action.count))
    return None if len(kept) == width else kept


def _describe(action: PlanAction, lp: LayerPlan) -> str:
    if isinstance(action, RemoveBlock):
        return f"remove {action.block.value}"
    kept = lp.kept_heads if isinstance(action, KeepHeads) else lp.kept_channels
    what = "heads" if isinstance(action, KeepHeads) else "channels"
    if kept is None:
        return f"keep all {what}"
    if isinstance(action, KeepHeads):
        return f"keep heads {','.join(map(str, kept))}"
    return f"keep {len(kept)} channels"


def _apply(lp: LayerPlan, action: PlanAction, shape: ModelShape,
           importance: Importance) -> LayerPlan:
    if isinstance(action, RemoveBlock):
        if action.block is BlockKind.ATTN:
            return replace(lp, attn_removed=True, kept_heads=None)
        return replace(lp, mlp_removed=True, kept_channels=None)
    kept = _kept(action, lp.index, shape, importance)
    if isinstance(action, KeepHeads):
        return replace(lp, kept_heads=kept)
    return replace(lp, kept_channels=kept)


def _slot(action: PlanAction) -> str:
    if isinstance(action, RemoveBlock):
        return str(action.block.value)
    return "attn" if isinstance(action, KeepHeads) else "mlp"


def resolve_manual_plan(manual: ManualPlan, shape: ModelShape, importance: Importance) -> Plan:
    """The ``Plan`` a manual plan block describes; CompileError with every problem found."""
    plan = Plan.dense(shape, method="manual")
    owner: dict[tuple[int, str], PlanAction] = {}
    errors: list[Diagnostic] = []
    step = 0
    for action in manual.actions:
        layers = action.layers.resolve(shape.n_layers)
        if not layers:
            errors.append(_error("P0205", f"the layer selector matches none of the model's "
                                 f"{shape.n_layers} layers", action.layers.span))
        for layer in layers:
            key = (layer, _slot(action))
            if key in owner:
                errors.append(_error("P0209", f"layer {layer}'s {key[1]} is already set on line "
                                     f"{owner[key].span.line}", action.span,
                                     "name each layer's attention and MLP at most once"))
                continue
            owner[key] = action
            try:
                lp = _apply(plan.layers[layer], action, shape, importance)
            except ActionError as exc:
                errors.append(_error(exc.code, f"layer {layer}: {exc}", action.span))
                continue
            plan = plan.with_layer(lp).with_decision(Decision(
                step, "manual", layer, _describe(action, lp), None, action.span.line))
            step += 1
    errors += [_error("P0206", p, manual.span) for p in plan.validate(shape)]
    if errors:
        raise CompileError(tuple(errors))
    return plan
