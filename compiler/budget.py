"""What a target means in numbers: budgets, prunable layers, step sizes, kept counts.

The one home of these rules (torch-free): ``explain``, the checks, the static methods
(``passes/methods``) and the probe layout (``passes/probe``) all call these functions.
- ``target.params`` is a fraction of ALL parameters (embeddings, norms, lm_head included),
  measured with ``compiler.plan.param_count``; removed = round(fraction * dense count);
- protected layers (``StaticPrune.protect``) are resolved against ``n_layers`` and excluded;
- the MLP search step defaults to intermediate/8 rounded to the nearest multiple of 64
  (ties to the even multiple; at least 64) for intermediate >= 512, else intermediate // 8
  (at least 1); a head step is ``head_groups`` whole KV groups (default 1);
- MultiPruner's default distribution is 44:52:4 (blocks : MLP : heads);
- one-shot widths are rounded to ``channel_unit``: 64 channels for intermediate >= 1024,
  else 8 (never more than a quarter of the width);
- probe counts (positions, samples) are exact integer ceilings of rational fractions,
  ``ceil(f * n) = (n * num + den - 1) // den``, clamped to ``[minimum, n]``;
- probe kept counts: MLP ``round_to * floor((1 - r) * width / round_to + 1/2)`` clipped to
  ``[min(round_to, width), width]``; heads ``width - int(r * width)``, at least 1;
- the per-layer probe ratio is ``round(L / (L - skipped) * r, 2)``, capped at 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TypeVar

from prunec.compiler.ir import ModelShape, StaticPrune
from prunec.compiler.plan import LayerPlan, Plan, param_count

DEFAULT_DISTRIBUTION = (0.44, 0.52, 0.04)  # blocks : MLP : heads, when none is given
N = TypeVar("N")  # an int, or a symbolic int inside a traced graph
MinMax = tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]


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
    """MLP channels per search step (``steps { mlp }``, else the default rule).

    >>> from dataclasses import replace
    >>> from prunec.compiler.diagnostics import Span
    >>> from prunec.compiler.ir import SMOLLM2_135M, Scope, StaticMethod, Target
    >>> at = Span.unknown("s")
    >>> s = StaticPrune(StaticMethod.MULTIPRUNER, Target(0.2, None, None, None, at), None,
    ...                 None, None, (), True, Scope.PER_LAYER, at)
    >>> [mlp_step(s, replace(SMOLLM2_135M, intermediate=i)) for i in (256, 1280, 1536, 2304)]
    [32, 128, 192, 256]
    """
    if static.steps is not None and static.steps.mlp_channels:
        return static.steps.mlp_channels
    if shape.intermediate >= 512:
        return max(64, round(shape.intermediate / 8 / 64) * 64)
    return max(1, shape.intermediate // 8)


def head_step(static: StaticPrune) -> int:
    """Whole KV groups of heads per search step (``steps { heads }``, default 1)."""
    if static.steps is not None and static.steps.head_groups:
        return static.steps.head_groups
    return 1


def channel_unit(shape: ModelShape) -> int:
    unit = 64 if shape.intermediate >= 1024 else 8
    return max(1, min(unit, shape.intermediate // 4))


def embedding_params(shape: ModelShape) -> int:
    """Embedding, lm_head (unless tied) and the final norm."""
    return shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2) + shape.hidden


def attn_params(shape: ModelShape, lp: LayerPlan) -> int:
    """Parameters of one layer's attention block under ``lp`` (norm included)."""
    return (param_count(shape, Plan((lp,), "x")) - embedding_params(shape)
            - _mlp_params(shape, lp))


def _mlp_params(shape: ModelShape, lp: LayerPlan) -> int:
    if lp.mlp_removed:
        return 0
    c = shape.intermediate if lp.kept_channels is None else len(lp.kept_channels)
    return shape.hidden + 3 * shape.hidden * c


# ------------------------------------------------------------------ probe counts


def as_fraction(f: float) -> Fraction:
    """A spec fraction as an exact rational (denominator <= 10_000)."""
    return Fraction(f).limit_denominator(10_000)


def ceil_count(n: N, frac: Fraction, minimum: int, ops: MinMax = (min, max)) -> N:
    """``min(n, max(minimum, ceil(frac * n)))`` in integer arithmetic; ``ops`` are the
    (min, max) to use (``torch.sym_min``/``sym_max`` inside a traced graph).

    >>> ceil_count(7, Fraction(1, 2), 2), ceil_count(3, Fraction(1, 20), 1)
    (4, 1)
    """
    smin, smax = ops
    c = (n * frac.numerator + frac.denominator - 1) // frac.denominator  # type: ignore[operator]
    out: N = smin(n, smax(minimum, c))
    return out


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
