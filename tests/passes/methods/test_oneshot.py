"""One-shot width methods: magnitude / wanda-sp / flap counts, selection, biases."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from method_fixtures import SPAN, calib_tokens, make_static
from tinymodels import tiny_llama

from prunec.compiler import budget
from prunec.compiler.ir import SMOLLM2_135M, LayerSelector, Scope, SelectorKind, StaticMethod
from prunec.passes.methods import MethodOptions, compute_plan
from prunec.passes.methods.oneshot import keep_heads_balanced, target_widths, widths_plan
from prunec.passes.reference import apply_plan_, apply_refit_, decoder_layers, shape_of


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return calib_tokens()


ONE_SHOT = (StaticMethod.MAGNITUDE, StaticMethod.WANDA_SP, StaticMethod.FLAP)


def _random_scores(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(shape.intermediate, generator=g, dtype=torch.float64),
             torch.rand(shape.n_heads, generator=g, dtype=torch.float64))
            for _ in range(shape.n_layers)]


@settings(max_examples=40, deadline=None)
@given(ratio=st.floats(0.03, 0.45))
def test_params_target_lands_within_one_unit_on_smollm2(ratio: float) -> None:
    shape = SMOLLM2_135M
    static = make_static(StaticMethod.MAGNITUDE, ratio)
    widths = target_widths(static, shape, budget.prunable_layers(static, shape))
    plan = widths_plan(static, shape, widths, _random_scores(shape))
    assert plan.validate(shape) == []
    goal = budget.params_goal(static, shape)
    unit_params = 3 * shape.hidden * budget.channel_unit(shape)
    assert abs(budget.removed_params(shape, plan) - goal) <= unit_params / 2 + 1
    kept = {len(lp.kept_channels or range(shape.intermediate)) for lp in plan.layers}
    assert max(kept) - min(kept) <= budget.channel_unit(shape)
    assert all(k % 64 == 0 for k in kept)


def test_magnitude_20_percent_on_smollm2_keeps_two_heads_per_group() -> None:
    shape = SMOLLM2_135M
    static = make_static(StaticMethod.MAGNITUDE, 0.2)
    widths = target_widths(static, shape, budget.prunable_layers(static, shape))
    assert {k for _, k in widths.values()} == {2}
    assert {c for c, _ in widths.values()} <= {1088, 1152}


@pytest.mark.parametrize("method", ONE_SHOT)
@pytest.mark.parametrize("scope", list(Scope))
def test_one_shot_plans_are_valid_and_hit_target(method, scope, calib) -> None:
    model = tiny_llama(1)
    shape = shape_of(model)
    protect = (LayerSelector(SelectorKind.INDEX, 0, None, SPAN),)
    static = make_static(method, 0.2, scope=scope, protect=protect)
    result = compute_plan(static, model, shape, calib, MethodOptions())
    plan = result.plan
    assert plan.validate(shape) == []
    assert plan.layers[0] == type(plan.layers[0])(0)
    removed = budget.removed_params(shape, plan)
    goal = budget.params_goal(static, shape)
    assert abs(removed - goal) <= 3 * shape.hidden * budget.channel_unit(shape)
    assert all(d.spec_line == SPAN.line for d in plan.decisions) and plan.decisions
    assert (len(result.refit) > 0) == (method is StaticMethod.FLAP)  # flap's default: bias


def test_magnitude_drops_the_weakest_channels_and_heads() -> None:
    model = tiny_llama(2)
    shape = shape_of(model)
    layer = decoder_layers(model)[1]
    with torch.no_grad():
        for c in (3, 40, 77):
            layer.mlp.gate_proj.weight[c] *= 0.01
            layer.mlp.up_proj.weight[c] *= 0.01
        layer.self_attn.q_proj.weight[16 * 4:16 * 5] *= 0.01  # head 4 (KV group 1)
    static = make_static(StaticMethod.MAGNITUDE, None, mlp=0.25, heads=0.34)
    plan = compute_plan(static, model, shape, None, MethodOptions()).plan
    lp = plan.layers[1]
    assert lp.kept_channels is not None and len(lp.kept_channels) == 96
    assert not {3, 40, 77} & set(lp.kept_channels)
    assert lp.kept_heads is not None and 4 not in lp.kept_heads and len(lp.kept_heads) == 4


def test_gqa_balanced_head_selection() -> None:
    shape = shape_of(tiny_llama(0))
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 9.0, 9.0], dtype=torch.float64)
    assert keep_heads_balanced(scores, shape, 1) == (0, 4)
    assert keep_heads_balanced(scores, shape, 2) == (0, 2, 4, 5)


def test_global_scope_moves_width_between_layers(calib) -> None:
    model = tiny_llama(3)
    shape = shape_of(model)
    with torch.no_grad():
        decoder_layers(model)[2].mlp.gate_proj.weight.mul_(0.05)
    per = compute_plan(make_static(StaticMethod.MAGNITUDE, 0.2), model, shape, calib).plan
    glo = compute_plan(make_static(StaticMethod.MAGNITUDE, 0.2, scope=Scope.GLOBAL), model,
                       shape, calib).plan
    width = [len(lp.kept_channels or range(shape.intermediate)) for lp in glo.layers]
    assert width[2] == min(width) and len(set(width)) > 1
    assert sum(width) == sum(len(lp.kept_channels or ()) for lp in per.layers)


def test_one_shot_block_ratio_is_a_check_error_not_a_method_error() -> None:
    model = tiny_llama(0)
    static = make_static(StaticMethod.MAGNITUDE, None, blocks=0.1)
    with pytest.raises(AssertionError):  # checks reject it first (P0211): reaching here is a bug
        compute_plan(static, model, shape_of(model), None)


def test_flap_bias_compensates_the_mean_of_removed_channels(calib) -> None:
    model = tiny_llama(4).double()
    shape = shape_of(model)
    result = compute_plan(make_static(StaticMethod.FLAP, 0.25), model, shape, calib)
    layer_index = 1
    seen: list[torch.Tensor] = []
    hook = decoder_layers(model)[layer_index].mlp.down_proj.register_forward_pre_hook(
        lambda _m, inp: seen.append(inp[0].reshape(-1, inp[0].shape[-1])))
    with torch.no_grad():
        model.model(calib)
    hook.remove()
    x = torch.cat(seen)
    dense_down = decoder_layers(model)[layer_index].mlp.down_proj
    pruned = apply_refit_(apply_plan_(copy.deepcopy(model), result.plan, shape),
                          result.refit, result.plan, shape)
    small = decoder_layers(pruned)[layer_index].mlp.down_proj
    kept = torch.tensor(result.plan.layers[layer_index].kept_channels)
    with torch.no_grad():
        gap = (dense_down(x) - small(x[:, kept])).mean(0)
        spread = (dense_down(x) - small(x[:, kept]) + small.bias).abs().mean()
    assert float(gap.abs().max()) < 1e-9
    assert float(spread) > 1e-6  # the bias compensates the mean, not every token
