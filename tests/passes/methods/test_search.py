"""MultiPruner / BlockPruner search: the fast engine chooses exactly the reference plan."""

from __future__ import annotations

import pytest
import torch
from method_fixtures import SPAN, calib_tokens, make_static
from tinymodels import TinyConfig, tiny_llama

from prunec.compiler import budget
from prunec.compiler.ir import LayerSelector, SelectorKind, StaticMethod, WidthImportance
from prunec.passes.methods import MethodOptions, compute_plan
from prunec.passes.reference import shape_of

CONFIG = TinyConfig(layers=5, hidden=48, intermediate=96, heads=6, kv_heads=2, head_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/passes/conftest.py


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama(7, CONFIG).double()


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return calib_tokens(5, 16, seed=11)


def _search(model, calib, method=StaticMethod.MULTIPRUNER, mode="fast", **kw):
    opts = kw.pop("opts", {})
    static = make_static(method, kw.pop("params", 0.3), steps=(12, None),
                         distribution=kw.pop("distribution", (0.4, 0.5, 0.1)), **kw)
    return static, compute_plan(static, model, shape_of(model), calib,
                                MethodOptions(mode=mode, batch_size=2, **opts))


@pytest.mark.parametrize(("method", "importance"), [
    (StaticMethod.MULTIPRUNER, None), (StaticMethod.MULTIPRUNER, WidthImportance.WANDA_SP),
    (StaticMethod.BLOCKPRUNER, None)])
def test_fast_engine_chooses_exactly_the_reference_plan(model, calib, method, importance) -> None:
    protect = (LayerSelector(SelectorKind.INDEX, -1, None, SPAN),)
    _, fast = _search(model, calib, method, "fast", protect=protect, importance=importance)
    _, ref = _search(model, calib, method, "reference", protect=protect, importance=importance)
    assert fast.plan == ref.plan
    assert [d.score for d in fast.plan.decisions] == [d.score for d in ref.plan.decisions]
    assert fast.stats.candidate_evaluations == ref.stats.candidate_evaluations
    assert fast.stats.layer_forwards < 0.75 * ref.stats.layer_forwards
    assert fast.plan.layers[-1] == type(fast.plan.layers[-1])(CONFIG.layers - 1)


def test_multipruner_runs_its_stages_in_order_to_the_target(model, calib) -> None:
    static, result = _search(model, calib)
    shape = shape_of(model)
    stages = [d.stage for d in result.plan.decisions]
    assert stages == sorted(stages, key=["blocks", "mlp", "heads"].index)
    assert set(stages) == {"blocks", "mlp", "heads"}
    assert budget.removed_params(shape, result.plan) >= budget.params_goal(static, shape)
    assert result.plan.validate(shape) == []
    assert all(d.spec_line == SPAN.line and d.score is not None for d in result.plan.decisions)
    assert len(result.stats.trajectory) == len(result.plan.decisions)
    assert result.stats.dense_score is not None and result.stats.wall_s > 0


def test_head_steps_remove_whole_kv_groups(model, calib) -> None:
    _, result = _search(model, calib, params=None, heads=0.34, distribution=None)
    shape = shape_of(model)
    for lp in result.plan.layers:
        if lp.kept_heads is not None:
            per_group = {h // shape.group_size for h in lp.kept_heads}
            assert len(lp.kept_heads) == len(per_group) * shape.group_size
    assert {d.stage for d in result.plan.decisions} == {"heads"}


def test_progress_events_cover_every_candidate(model, calib) -> None:
    events = []
    _search(model, calib, method=StaticMethod.BLOCKPRUNER, params=0.1,
            opts={"progress": events.append})
    sweeps = [e for e in events if "step" in e.task]
    assert sweeps and all(1 <= e.done <= e.total for e in sweeps)
    finished = [e for e in sweeps if e.done == e.total]
    assert len(finished) == len({e.task for e in sweeps}) and finished[-1].score is not None
    assert any("stage" in e.task for e in events)


def test_wanda_sp_importance_cuts_the_lowest_activation_scores(model, calib) -> None:
    """importance = wanda-sp: every MLP cut keeps the channels with the highest wanda-sp
    scores (dense model, score dataset), which here differ from the magnitude order."""
    from prunec.passes.methods import importance as imp
    from prunec.passes.reference import decoder_layers

    shape = shape_of(model)
    _, result = _search(model, calib, params=None, mlp=0.25, distribution=None,
                        importance=WidthImportance.WANDA_SP)
    stats = imp.collect_stats(model, calib, 2)
    cut = [lp for lp in result.plan.layers if lp.kept_channels is not None]
    assert cut
    differs = False
    for lp in cut:
        layer = decoder_layers(model)[lp.index]
        wanda, _ = imp.activation_scores(layer, stats[lp.index], shape, imp.wanda_sp_columns)
        n = len(lp.kept_channels)
        assert set(lp.kept_channels) == set(torch.topk(wanda, n).indices.tolist())
        differs |= set(lp.kept_channels) != set(
            torch.topk(imp.mlp_magnitude(layer), n).indices.tolist())
    assert differs
