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
    return param_count(shape, Plan.dense(shape))


def removed_params(shape: ModelShape, plan: Plan) -> int:
    return dense_params(shape) - param_count(shape, plan)


def params_goal(static: StaticPrune, shape: ModelShape) -> int | None:
    """Parameters to remove for a ``params`` target (None for per-dimension targets)."""
    if static.target.params is None:
        return None
    return round(static.target.params * dense_params(shape))


def prunable_layers(static: StaticPrune, shape: ModelShape) -> tuple[int, ...]:
    protected = {i for sel in static.protect for i in sel.resolve(shape.n_layers)}
    return tuple(i for i in range(shape.n_layers) if i not in protected)


def mlp_step(static: StaticPrune, shape: ModelShape) -> int:
    if static.steps is not None and static.steps.mlp_channels:
        return static.steps.mlp_channels
    if shape.intermediate >= 512:
        return max(64, round(shape.intermediate / 8 / 64) * 64)
    return max(1, shape.intermediate // 8)


def head_step(static: StaticPrune) -> int:
    if static.steps is not None and static.steps.head_groups:
        return static.steps.head_groups
    return 1


def channel_unit(shape: ModelShape) -> int:
    unit = 64 if shape.intermediate >= 1024 else 8
    return max(1, min(unit, shape.intermediate // 4))


def attn_params(shape: ModelShape, lp: LayerPlan) -> int:
    """Parameters of one layer's attention block under ``lp`` (norm included)."""
    return param_count(shape, Plan((lp,), "x")) - _embedding_params(shape) - _mlp_params(shape, lp)


def _mlp_params(shape: ModelShape, lp: LayerPlan) -> int:
    if lp.mlp_removed:
        return 0
    c = shape.intermediate if lp.kept_channels is None else len(lp.kept_channels)
    return shape.hidden + 3 * shape.hidden * c


def _embedding_params(shape: ModelShape) -> int:
    return shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2) + shape.hidden
