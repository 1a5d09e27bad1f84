"""Fixtures of the probe tests: policies, tiny GQA models and their calibration history."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    LayerSelector,
    ProbeMetric,
    ProbeMode,
    ProbePolicy,
    ProbeTarget,
    SelectorKind,
)

SPAN = Span("test", 0, 0, 0, 0)
PolicyFn = Callable[..., ProbePolicy]


def _policy(ratio: float, mode: ProbeMode = ProbeMode.PROBE,
            metric: ProbeMetric = ProbeMetric.PPSP,
            targets: tuple[ProbeTarget, ...] = (ProbeTarget.MLP, ProbeTarget.HEADS),
            skip: tuple[int, ...] = (0,), round_to: int = 8, momentum: float = 0.99,
            sample_fraction: float = 0.05, compensate: bool = False) -> ProbePolicy:
    selectors = tuple(LayerSelector(SelectorKind.INDEX, i, None, SPAN) for i in skip)
    return ProbePolicy(ratio, targets, selectors, mode, 0.5, sample_fraction, momentum, None,
                       metric, round_to, SPAN, compensate)


@pytest.fixture(scope="session")
def make_policy() -> PolicyFn:
    return _policy


@pytest.fixture(scope="session")
def calib_ids() -> torch.Tensor:
    return torch.randint(0, 160, (12, 24), generator=torch.Generator().manual_seed(1))
