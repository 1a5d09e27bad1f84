"""The pruning passes reproduce the module-level reference (``apply_plan_``) exactly.

Exactness: ``relative_error(graph, reference) = max|a - b| / max|b| <= 1e-4`` on logits, for
random plans (blocks, channel subsets, GQA head subsets including whole KV groups) at
several batch/seq sizes of the same captured graph.
"""

from __future__ import annotations

import pytest
import torch
from graphkit import Captured
from hypothesis import given, settings
from hypothesis import strategies as st
from tinymodels import random_plan
from torch.fx import GraphModule

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.plan import LayerPlan, Plan
from prunec.passes.analysis import get_tensor, module_path
from prunec.passes.infra import FunctionPass, PassContext, PassError, PassManager
from prunec.passes.pipeline import PIPELINE, run_pipeline
from prunec.passes.reference import reference_logits, relative_error

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = ((1, 5), (3, 11), (2, 33))


def assert_matches(captured: Captured, gm: GraphModule, plan: Plan) -> None:
    ref = captured.reference(plan)
    for batch, seq in SIZES:
        ids = torch.randint(0, captured.shape.vocab, (batch, seq))
        with torch.no_grad():
            got = gm(ids)
        assert relative_error(got, reference_logits(ref, ids)) <= 1e-4, (batch, seq)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_plans_match_reference(captured: Captured, seed: int) -> None:
    plan = random_plan(captured.shape, seed)
    gm, _ = run_pipeline(captured.graph(), plan, captured.shape)
    assert_matches(captured, gm, plan)


def test_dense_plan_changes_nothing(captured: Captured) -> None:
    plan = Plan.dense(captured.shape)
    gm, report = run_pipeline(captured.graph(), plan, captured.shape)
    rewrites = {"remove_blocks", "keep_channels", "keep_heads", "fix_head_shapes"}
    assert [r.name for r in report.results if r.modified and r.name in rewrites] == []
    assert_matches(captured, gm, plan)


def test_pipeline_is_one_named_list() -> None:
    names = [p.name for p in PIPELINE]
    assert names == ["remove_blocks", "keep_channels", "keep_heads", "fix_head_shapes",
                     "drop_cache_outputs", "eliminate_dead_code", "drop_cache_inputs",
                     "drop_unused_weights"]


def test_removed_blocks_leave_no_nodes_and_no_weights(captured: Captured) -> None:
    shape = captured.shape
    plan = Plan.dense(shape).with_layer(LayerPlan(1, attn_removed=True, mlp_removed=True))
    gm, report = run_pipeline(captured.graph(), plan, shape)
    assert report.counts("remove_blocks") == {"attention blocks removed": 1,
                                              "mlp blocks removed": 1}
    live = [n for n in gm.graph.nodes if ".layers.1." in module_path(n) + "."
            and n.target is not torch.ops.aten._assert_tensor_metadata.default]
    assert [n.name for n in live if "layernorm" not in module_path(n)] == []
    params = [name for name, _ in gm.named_parameters()]
    assert not [p for p in params if ".layers.1." in p]
    assert report.counts("drop_unused_weights")["tensors dropped"] >= 9
    assert_matches(captured, gm, plan)


def test_whole_kv_group_removal_shrinks_k_and_v(captured: Captured) -> None:
    shape = captured.shape
    g, d = shape.group_size, shape.head_dim
    heads = tuple(range(g, 2 * g))  # exactly KV group 1, all its query heads
    plan = Plan.dense(shape).with_layer(LayerPlan(0, kept_heads=heads))
    gm, report = run_pipeline(captured.graph(), plan, shape)
    counts = report.counts("keep_heads")
    assert counts["kv heads removed"] == shape.n_kv_heads - 1
    assert counts["query heads removed"] == shape.n_heads - g
    assert get_tensor(gm, "model.model.layers.0.self_attn.k_proj.weight").shape[0] == d
    assert get_tensor(gm, "model.model.layers.0.self_attn.q_proj.weight").shape[0] == g * d
    assert report.counts("fix_head_shapes")["repeat_kv expands rewritten"] == 2
    assert_matches(captured, gm, plan)


def test_one_head_per_group_keeps_every_kv_group(captured: Captured) -> None:
    shape = captured.shape
    g = shape.group_size
    heads = tuple(kv * g + (kv % g) for kv in range(shape.n_kv_heads))
    plan = Plan.dense(shape).with_layer(LayerPlan(2, kept_heads=heads))
    gm, report = run_pipeline(captured.graph(), plan, shape)
    assert report.counts("keep_heads")["kv heads removed"] == 0
    assert_matches(captured, gm, plan)


def test_mlp_channels_shrink_physically(captured: Captured) -> None:
    shape = captured.shape
    kept = tuple(range(0, shape.intermediate, 4))
    plan = Plan.dense(shape).with_layer(LayerPlan(0, kept_channels=kept))
    gm, report = run_pipeline(captured.graph(), plan, shape)
    h = shape.hidden
    assert get_tensor(gm, "model.model.layers.0.mlp.down_proj.weight").shape == (h, len(kept))
    removed = 3 * h * (shape.intermediate - len(kept))
    assert report.counts("keep_channels")["weight elements removed"] == removed
    assert_matches(captured, gm, plan)


def test_invalid_plan_is_a_compile_error(captured: Captured) -> None:
    shape = captured.shape
    bad = Plan.dense(shape).with_layer(LayerPlan(0, kept_heads=(0, 1, shape.group_size)))
    if shape.group_size == 2:  # (0, 1 | 2): 2 heads in group 0, 1 in group 1
        with pytest.raises(CompileError) as info:
            run_pipeline(captured.graph(), bad, shape)
        assert info.value.diagnostics[0].code == "P0510"
    with pytest.raises(CompileError):
        run_pipeline(captured.graph(), Plan(bad.layers[:1]), shape)


def test_pass_manager_names_the_failing_pass(captured: Captured) -> None:
    def broken(gm: GraphModule, ctx: PassContext) -> dict[str, int]:
        raise KeyError("no such node")

    manager = PassManager((PIPELINE[0], FunctionPass("broken", broken)))
    from prunec.passes.analysis import analyze

    gm = captured.graph()
    ctx = PassContext(Plan.dense(captured.shape), captured.shape, analyze(gm, captured.shape))
    with pytest.raises(PassError, match="'broken' failed.*remove_blocks"):
        manager.run(gm, ctx)


def test_report_is_plain_data(captured: Captured) -> None:
    import dataclasses
    import json

    plan = random_plan(captured.shape, 7)
    _, report = run_pipeline(captured.graph(), plan, captured.shape)
    data = json.loads(json.dumps(dataclasses.asdict(report)))
    assert [r["name"] for r in data["results"]] == [p.name for p in PIPELINE]
    assert data["results"][0]["counts"] == report.counts("remove_blocks")
