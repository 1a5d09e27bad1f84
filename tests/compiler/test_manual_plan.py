"""compiler.manual: manual plan actions -> Plan (no model needed: importance is a callback)."""

from __future__ import annotations

import pytest

from prunec.compiler.diagnostics import CompileError, Span
from prunec.compiler.ir import (
    BlockKind,
    KeepChannels,
    KeepHeads,
    LayerSelector,
    ManualPlan,
    ModelShape,
    RemoveBlock,
    SelectorKind,
)
from prunec.compiler.manual import balanced_heads, resolve_manual_plan, top_indices

SHAPE = ModelShape("llama", 4, 96, 16, 6, 2, 16, 160, True)  # 6 heads, 2 KV groups of 3


def sp(line: int) -> Span:
    return Span("t.prune", line, 1, line, 5)


def at(i: int) -> LayerSelector:
    return LayerSelector(SelectorKind.INDEX, i, None, sp(1))


def scores(kind: str, layer: int) -> list[float]:
    """Channel k scores k (so the top ones are the last); head h scores (h * 7) % 6."""
    if kind == "channels":
        return [float(k) for k in range(SHAPE.intermediate)]
    return [float((h * 7 + layer) % 6) for h in range(SHAPE.n_heads)]


def plan_of(*actions: object) -> ManualPlan:
    return ManualPlan(tuple(actions), sp(1))  # type: ignore[arg-type]


def codes(exc: pytest.ExceptionInfo[CompileError]) -> list[str]:
    return [d.code for d in exc.value.diagnostics]


def test_remove_blocks_and_indices() -> None:
    plan = resolve_manual_plan(plan_of(
        RemoveBlock(at(0), BlockKind.ATTN, sp(2)),
        RemoveBlock(LayerSelector(SelectorKind.SLICE, -2, None, sp(3)), BlockKind.MLP, sp(3)),
        KeepChannels(at(1), None, (5, 3, 3, 9), sp(4)),
        KeepHeads(at(1), None, (3, 4, 5), sp(5)),
    ), SHAPE, scores)
    assert plan.layers[0].attn_removed and not plan.layers[0].mlp_removed
    assert [lp.mlp_removed for lp in plan.layers] == [False, False, True, True]
    assert plan.layers[1].kept_channels == (3, 5, 9)
    assert plan.layers[1].kept_heads == (3, 4, 5)
    assert plan.method == "manual"
    assert [d.spec_line for d in plan.decisions] == [2, 3, 3, 4, 5]
    assert plan.validate(SHAPE) == []


def test_counts_use_importance() -> None:
    plan = resolve_manual_plan(plan_of(KeepChannels(at(2), 4, None, sp(2))), SHAPE, scores)
    assert plan.layers[2].kept_channels == (12, 13, 14, 15)


def test_head_count_is_balanced_per_kv_group() -> None:
    # layer 0 scores: head h -> (7h) % 6 = h % 6: per group {0,1,2} -> keep 2 (1, 2); {3,4,5}
    plan = resolve_manual_plan(plan_of(KeepHeads(at(0), 4, None, sp(2))), SHAPE, scores)
    assert plan.layers[0].kept_heads == (1, 2, 4, 5)
    assert plan.layers[0].kv_groups_kept(SHAPE) == (0, 1)


def test_head_count_of_whole_groups() -> None:
    s = [1.0, 1.0, 1.0, 5.0, 0.0, 0.0]  # group 1 sums higher
    assert balanced_heads(s, 3, SHAPE) == (3, 4, 5)


def test_full_width_is_dense() -> None:
    plan = resolve_manual_plan(plan_of(KeepHeads(at(0), 6, None, sp(2)),
                                       KeepChannels(at(0), 16, None, sp(3))), SHAPE, scores)
    assert plan.layers[0].kept_heads is None and plan.layers[0].kept_channels is None


def test_top_indices_ties_prefer_lower_index() -> None:
    assert top_indices([1.0, 2.0, 2.0, 2.0], 2) == (1, 2)


@pytest.mark.parametrize("action, code", [
    (KeepHeads(at(0), 5, None, sp(2)), "P0206"),  # 5 is neither a multiple of 2 nor 3
    (KeepHeads(at(0), None, (0, 1, 3), sp(2)), "P0206"),  # 2 + 1: unequal per group
    (KeepChannels(at(0), 0, None, sp(2)), "P0207"),
    (KeepChannels(at(0), 17, None, sp(2)), "P0207"),
    (KeepChannels(at(0), None, (16,), sp(2)), "P0207"),
    (RemoveBlock(at(9), BlockKind.MLP, sp(2)), "P0205"),
])
def test_errors(action: object, code: str) -> None:
    with pytest.raises(CompileError) as exc:
        resolve_manual_plan(plan_of(action), SHAPE, scores)
    assert code in codes(exc)


def test_conflicting_actions_name_both_lines() -> None:
    with pytest.raises(CompileError) as exc:
        resolve_manual_plan(plan_of(RemoveBlock(at(1), BlockKind.ATTN, sp(2)),
                                    KeepHeads(at(1), 3, None, sp(7))), SHAPE, scores)
    (d,) = exc.value.diagnostics
    assert d.code == "P0209" and d.span.line == 7 and "line 2" in d.message
