"""What a target means in numbers: parameter budgets, prunable layers, step sizes, rounding.

Rules:
- ``target.params`` is a fraction of ALL parameters (embeddings, norms, lm_head included),
  measured with ``compiler.plan.param_count``; removed = round(fraction * dense count);
- protected layers (``StaticPrune.protect``) are resolved against ``n_layers`` and excluded;
- the MLP search step defaults to intermediate/8 rounded to a multiple of 64 (at least 64)
  for intermediate >= 512, else intermediate/8 (at least 1); a head step is ``head_groups``
  whole KV groups (default 1);
- one-shot widths are rounded to ``channel_unit``: 64 channels for intermediate >= 1024,
  else 8 (never more than a quarter of the width).
"""

from __future__ import annotations

from prunec.compiler.ir import ModelShape, StaticPrune
from prunec.compiler.plan import LayerPlan, Plan, param_count


def dense_params(shape: ModelShape) -> int:
    count: int = param_count(shape, Plan.dense(shape))
    return count


def removed_params(shape: ModelShape, plan: Plan) -> int:
    removed: int = dense_params(shape) - param_count(shape, plan)
    return removed


def params_goal(static: StaticPrune, shape: ModelShape) -> int | None:
    """Parameters to remove for a ``params`` target (None for per-dimension targets)."""
    if static.target.params is None:
        return None
    goal: int = round(static.target.params * dense_params(shape))
    return goal


def prunable_layers(static: StaticPrune, shape: ModelShape) -> tuple[int, ...]:
    protected = {i for sel in static.protect for i in sel.resolve(shape.n_layers)}
    return tuple(i for i in range(shape.n_layers) if i not in protected)


def mlp_step(static: StaticPrune, shape: ModelShape) -> int:
    step: int
    if static.steps is not None and static.steps.mlp_channels:
        step = static.steps.mlp_channels
        return step
    if shape.intermediate >= 512:
        step = max(64, round(shape.intermediate / 8 / 64) * 64)
        return step
    step = max(1, shape.intermediate // 8)
    return step


def head_step(static: StaticPrune) -> int:
    if static.steps is not None and static.steps.head_groups:
        groups: int = static.steps.head_groups
        return groups
    return 1


def channel_unit(shape: ModelShape) -> int:
    unit = 64 if shape.intermediate >= 1024 else 8
    rounded: int = max(1, min(unit, shape.intermediate // 4))
    return rounded


def attn_params(shape: ModelShape, lp: LayerPlan) -> int:
    """Parameters of one layer's attention block under ``lp`` (norm included)."""
    params: int = (param_count(shape, Plan((lp,), "x")) - _embedding_params(shape)
                   - _mlp_params(shape, lp))
    return params


def _mlp_params(shape: ModelShape, lp: LayerPlan) -> int:
    if lp.mlp_removed:
        return 0
    c = shape.intermediate if lp.kept_channels is None else len(lp.kept_channels)
    params: int = shape.hidden + 3 * shape.hidden * c
    return params


def _embedding_params(shape: ModelShape) -> int:
    params: int = shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2) + shape.hidden
    return params
