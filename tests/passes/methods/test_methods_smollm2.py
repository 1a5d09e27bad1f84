"""The static methods on the real demo model (slow: loads SmolLM2-135M)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from method_fixtures import SPAN, make_static

from prunec.compiler import budget
from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    DType,
    LayerSelector,
    ModelDecl,
    ModelSource,
    SelectorKind,
    StaticMethod,
)
from prunec.compiler.plan import LayerPlan, Plan
from prunec.passes.methods import compute_plan
from prunec.passes.methods.evaluator import Driver, FastEngine, ReferenceEngine

pytestmark = pytest.mark.slow
SPECS = Path(__file__).resolve().parents[3] / "specs"


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: far faster than two when the 2-core machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol():
    from prunec.runtime.models import load_model

    return load_model(ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span("t", 1, 1, 1, 1)),
                      SPECS)


def test_magnitude_on_smollm2_hits_twenty_percent(smol) -> None:
    protect = (LayerSelector(SelectorKind.INDEX, 0, None, SPAN),
               LayerSelector(SelectorKind.INDEX, -1, None, SPAN))
    static = make_static(StaticMethod.MAGNITUDE, 0.2, protect=protect)
    plan = compute_plan(static, smol.model, smol.shape, None).plan
    assert plan.validate(smol.shape) == []
    unit = 3 * smol.shape.hidden * budget.channel_unit(smol.shape)
    assert abs(budget.removed_params(smol.shape, plan) - budget.params_goal(static, smol.shape)) \
        <= unit
    assert plan.layers[0] == LayerPlan(0) and plan.layers[-1] == LayerPlan(29)
    assert {len(lp.kept_heads or ()) for lp in plan.layers[1:-1]} == {6}


def test_fast_and_reference_scores_are_bit_identical_on_smollm2(smol) -> None:
    calib = torch.randint(0, smol.shape.vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    driver = Driver(smol.model, calib, 2)
    plan = Plan.dense(smol.shape).with_layer(LayerPlan(27, attn_removed=True))
    fast = FastEngine(smol.model, smol.shape, driver, plan, 256)
    ref = ReferenceEngine(smol.model, smol.shape, driver, plan)
    assert fast.current() == ref.current()
    for lp in (LayerPlan(28, mlp_removed=True), LayerPlan(5, kept_channels=tuple(range(1344))),
               LayerPlan(27, attn_removed=True, kept_heads=None, mlp_removed=True)):
        assert fast.score(lp) == ref.score(lp)
    assert fast.counters.layer_forwards < ref.counters.layer_forwards / 2
