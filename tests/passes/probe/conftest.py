"""Fixtures of the probe tests: policies, tiny GQA models and their calibration history."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    KeptScope,
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
            sample_fraction: float = 0.05, compensate: bool = False,
            kept: KeptScope = KeptScope.PER_SEQUENCE) -> ProbePolicy:
    selectors = tuple(LayerSelector(SelectorKind.INDEX, i, None, SPAN) for i in skip)
    return ProbePolicy(ratio, targets, selectors, mode, 0.5, sample_fraction, momentum, None,
                       metric, round_to, SPAN, compensate, kept)


@pytest.fixture(scope="session")
def make_policy() -> PolicyFn:
    return _policy


@pytest.fixture(scope="session")
def calib_ids() -> torch.Tensor:
    return torch.randint(0, 160, (12, 24), generator=torch.Generator().manual_seed(1))


class Demo:
    """SmolLM2 (the demo model, loaded once per session) and KJV token batches from specs/."""

    def __init__(self) -> None:
        from pathlib import Path

        from prunec.compiler.ir import DType, ModelDecl, ModelSource
        from prunec.runtime.models import load_model

        self.specs = Path(__file__).resolve().parents[3] / "specs"
        self.loaded = load_model(ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, SPAN),
                                 self.specs)
        self.model = self.loaded.model

    def text(self, file: str, n: int, t: int) -> torch.Tensor:
        from prunec.compiler.ir import DataFormat, DatasetDecl
        from prunec.runtime.data import load_dataset

        decl = DatasetDecl(file, DataFormat.TEXT, (f"data/{file}",), None, n, t, 0, None, SPAN)
        return load_dataset(decl, self.specs, self.loaded.tokenizer)


@pytest.fixture(scope="session")
def smollm2() -> Demo:
    """The demo model for the slow tests (marked ``slow`` where used)."""
    return Demo()

