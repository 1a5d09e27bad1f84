"""The search on Ray actors on the real demo model (slow: loads SmolLM2-135M, starts Ray).

A short MultiPruner search (2% of the parameters: a blocks step and an MLP step, about 90
candidates) at workers 2 commits the decisions of the in-process search, scores equal bit
for bit, and writes the same plan lock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from method_fixtures import SPAN, make_static

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    DType,
    LayerSelector,
    ModelDecl,
    ModelSource,
    SelectorKind,
    StaticMethod,
    StaticPrune,
    WidthImportance,
)
from prunec.passes.methods import MethodOptions, compute_plan
from prunec.passes.methods.lock import lock_json

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
SPECS = Path(__file__).resolve().parents[3] / "specs"


def _static() -> StaticPrune:
    return make_static(StaticMethod.MULTIPRUNER, 0.02, distribution=(0.3, 0.7, 0.0),
                       steps=(384, 1), protect=(LayerSelector(SelectorKind.INDEX, 0, None, SPAN),),
                       importance=WidthImportance.WANDA_SP)


def test_two_workers_search_smollm2_as_one(one_thread: None) -> None:
    from prunec.runtime.models import load_model

    smol = load_model(ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span("t", 1, 1, 1, 1)),
                      SPECS)
    calib = torch.randint(0, smol.shape.vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    one, two = (compute_plan(_static(), smol.model, smol.shape, calib,
                             MethodOptions(batch_size=2, workers=w)) for w in (1, 2))
    assert two.plan == one.plan and two.stats.trajectory == one.stats.trajectory
    assert [d.stage for d in one.plan.decisions][:2] == ["blocks", "mlp"]
    assert json.dumps(lock_json(two), sort_keys=True) == json.dumps(lock_json(one), sort_keys=True)
