"""Helpers for the static-method tests: StaticPrune builders and a calibration batch."""

from __future__ import annotations

import torch

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    Distribution,
    LayerSelector,
    Scope,
    StaticMethod,
    StaticPrune,
    Steps,
    Target,
    WidthImportance,
)

SPAN = Span("test.prune", 7, 3, 7, 20)


def make_static(method: StaticMethod, params: float | None = 0.2, *,
                mlp: float | None = None, heads: float | None = None,
                blocks: float | None = None, scope: Scope = Scope.PER_LAYER,
                protect: tuple[LayerSelector, ...] = (), reorder: bool = True,
                distribution: tuple[float, float, float] | None = None,
                steps: tuple[int | None, int | None] | None = None,
                importance: WidthImportance | None = None) -> StaticPrune:
    dist = None if distribution is None else Distribution(*distribution, SPAN)
    st = None if steps is None else Steps(steps[0], steps[1], SPAN)
    return StaticPrune(method, Target(params, mlp, heads, blocks, SPAN), dist, st, "calib",
                       protect, reorder, scope, SPAN, importance)


def calib_tokens(samples: int = 6, seq_len: int = 24, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, 160, (samples, seq_len), generator=torch.Generator().manual_seed(seed))
