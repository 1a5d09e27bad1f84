"""The eager Probe Pruning (prunec.passes.probe) against HF's own modules on tiny models.

Independent references: probe selection, rotary, causal attention among probe tokens and
the activations are recomputed with the HF LlamaAttention / LlamaMLP modules; pruning is
checked by zeroing the dropped o_proj / down_proj columns of a copy of the HF model.
Tolerance: ``relative_error`` (max abs diff / max abs reference) <= 1e-4 for logits.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tinymodels import TinyConfig, random_plan, tiny_llama

from prunec.compiler.ir import ProbeMetric, ProbeMode, ProbeTarget
from prunec.passes.probe import GateKind, ProbeRunner, calibrate_history, layer_gates
from prunec.passes.reference import apply_plan_, reference_logits, relative_error, shape_of

TOL = 1e-4
LAYER = 2  # the one gated layer in the single-layer tests
ONLY_LAYER_2 = (0, 1, 3)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama(3)


def _history(model: torch.nn.Module, ids: torch.Tensor, make_policy):  # type: ignore[no-untyped-def]
    return calibrate_history(model, shape_of(model), make_policy(0.0), ids, max_len=40)


def _batch(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 160, (b, t), generator=torch.Generator().manual_seed(seed))


def _capture_input(module: torch.nn.Module, fn):  # type: ignore[no-untyped-def]
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        fn()
    finally:
        handle.remove()
    return seen[0]


def _naive_probe(h: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b, t = h.shape[:2]
    if full:
        return torch.arange(t), torch.arange(b)
    pos_norm = torch.sqrt((h ** 2).sum(dim=(0, 2)))
    pos = torch.sort(torch.argsort(pos_norm, descending=True)[:max(2, math.ceil(0.5 * t))]).values
    smp_norm = torch.sqrt((h[:, pos] ** 2).sum(dim=(1, 2)))
    return pos, torch.argsort(smp_norm, descending=True)[:max(1, math.ceil(0.05 * b))]


def _causal(n: int) -> torch.Tensor:
    return torch.triu(torch.full((n, n), float("-inf")), 1)[None, None]


def _fused(probe_x: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
    p = (probe_x ** 2).mean(0)
    w = p / (p + hist + 1e-6)
    return ((1 - w) * hist + w * p).sum(0)


def _naive_heads(model, h, hist, keep, full):  # type: ignore[no-untyped-def]
    layer = model.model.layers[LAYER]
    pos, smp = _naive_probe(h, full)
    probe = layer.input_layernorm(h[smp][:, pos])
    rope = model.model.rotary_emb(probe, pos[None].expand(probe.shape[0], -1))
    x = _capture_input(layer.self_attn.o_proj,
                       lambda: layer.self_attn(probe, rope, _causal(len(pos))))
    s = _fused(x, hist[pos])
    w = layer.self_attn.o_proj.weight
    d = model.config.head_dim
    score = torch.stack([(s[i * d:(i + 1) * d] * w[:, i * d:(i + 1) * d] ** 2).norm()
                         for i in range(w.shape[1] // d)])
    return set(torch.topk(score, keep).indices.tolist())


def _naive_channels(model, h_mlp, hist, keep, full):  # type: ignore[no-untyped-def]
    layer = model.model.layers[LAYER]
    pos, smp = _naive_probe(h_mlp, full)
    probe = layer.post_attention_layernorm(h_mlp[smp][:, pos])
    x = _capture_input(layer.mlp.down_proj, lambda: layer.mlp(probe))
    s = _fused(x, hist[pos])
    score = (s * layer.mlp.down_proj.weight ** 2).norm(dim=0)
    return set(torch.topk(score, keep).indices.tolist())


def _residuals(model, ids):  # type: ignore[no-untyped-def]
    layer = model.model.layers[LAYER]
    h_attn = _capture_input(layer.input_layernorm, lambda: reference_logits(model, ids))
    h_mlp = _capture_input(layer.post_attention_layernorm, lambda: reference_logits(model, ids))
    return h_attn, h_mlp


@pytest.mark.parametrize("mode", [ProbeMode.PROBE, ProbeMode.FULL_BATCH])
@pytest.mark.parametrize("target", [ProbeTarget.HEADS, ProbeTarget.MLP])
def test_probe_choice_matches_hf_modules(model, calib_ids, make_policy, mode, target):  # type: ignore[no-untyped-def]
    hist = _history(model, calib_ids, make_policy)
    policy = make_policy(0.4, mode, targets=(target,), skip=ONLY_LAYER_2)
    runner = ProbeRunner(model, shape_of(model), policy, hist)
    ids = _batch(24, 20, 7)  # 24 samples: the probe takes ceil(0.05*24) = 2 of them
    runner.run(ids)
    (kept,) = runner.last_kept
    h_attn, h_mlp = _residuals(model, ids)
    full = mode is ProbeMode.FULL_BATCH
    if target is ProbeTarget.HEADS:
        want = _naive_heads(model, h_attn, hist.attn[LAYER].sq, len(kept), full)
    else:
        want = _naive_channels(model, h_mlp, hist.mlp[LAYER].sq, len(kept), full)
    assert set(kept.tolist()) == want


def _zeroed_copy(model, kept_heads, kept_channels):  # type: ignore[no-untyped-def]
    ref = copy.deepcopy(model)
    layer = ref.model.layers[LAYER]
    d = ref.config.head_dim
    with torch.no_grad():
        for hd in set(range(ref.config.num_attention_heads)) - set(kept_heads):
            layer.self_attn.o_proj.weight[:, hd * d:(hd + 1) * d] = 0
        dropped = sorted(set(range(ref.config.intermediate_size)) - set(kept_channels))
        layer.mlp.down_proj.weight[:, dropped] = 0
    return ref


def test_pruned_batch_and_history_update(model, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    hist = _history(model, calib_ids, make_policy)
    runner = ProbeRunner(model, shape_of(model), make_policy(0.5, skip=ONLY_LAYER_2, momentum=0.9),
                         hist)
    ids = _batch(6, 16, 11)
    got = runner.run(ids)
    heads, channels = (k.tolist() for k in runner.last_kept)
    ref = _zeroed_copy(model, heads, channels)
    assert relative_error(got, reference_logits(ref, ids)) <= TOL
    layer = ref.model.layers[LAYER]
    for x_of, old, new, cols in (
            (layer.self_attn.o_proj, hist.attn[LAYER].sq, runner.state[0],
             [hd * 16 + j for hd in heads for j in range(16)]),
            (layer.mlp.down_proj, hist.mlp[LAYER].sq, runner.state[1], channels)):
        x = _capture_input(x_of, lambda: reference_logits(ref, ids))
        want = old.clone()
        want[:16, cols] = 0.9 * old[:16, cols] + 0.1 * (x[:, :, cols] ** 2).mean(0)
        assert new.shape == (old.shape[1], old.shape[0])  # the gated H is [C, max_len]
        assert torch.allclose(new, want.t(), rtol=1e-5, atol=1e-7)


def test_compensation_adds_the_skipped_channels_mean(model, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    """Full-batch probing of layer 2's MLP with compensation = the zeroed model plus the
    bias W_down[:, skipped] @ (mean over the batch of the dense down_proj input)."""
    hist = _history(model, calib_ids, make_policy)
    policy = make_policy(0.5, ProbeMode.FULL_BATCH, targets=(ProbeTarget.MLP,),
                         skip=ONLY_LAYER_2, compensate=True)
    runner = ProbeRunner(model, shape_of(model), policy, hist)
    ids = _batch(5, 18, 4)
    got = runner.run(ids)
    (kept,) = runner.last_kept
    down = model.model.layers[LAYER].mlp.down_proj
    mean = _capture_input(down, lambda: reference_logits(model, ids)).mean(dim=(0, 1))
    skipped = sorted(set(range(down.weight.shape[1])) - set(kept.tolist()))
    ref = _zeroed_copy(model, list(range(model.config.num_attention_heads)), kept.tolist())
    bias = down.weight[:, skipped] @ mean[skipped]
    ref.model.layers[LAYER].mlp.down_proj.register_forward_hook(lambda _m, _a, out: out + bias)
    assert relative_error(got, reference_logits(ref, ids)) <= TOL
    plain = ProbeRunner(model, shape_of(model), make_policy(
        0.5, ProbeMode.FULL_BATCH, targets=(ProbeTarget.MLP,), skip=ONLY_LAYER_2), hist)
    assert relative_error(plain.run(ids), got) > 10 * TOL  # the bias is not negligible
    assert plain.last_kept[0].tolist() == kept.tolist()


def test_ratio_zero_is_the_dense_model(model, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    hist = _history(model, calib_ids, make_policy)
    runner = ProbeRunner(model, shape_of(model), make_policy(0.0), hist)
    ids = _batch(3, 30, 2)
    assert relative_error(runner.run(ids), reference_logits(model, ids)) <= TOL
    assert runner.state == [] and runner.gated.history_names == ()


def test_calibrated_history_is_the_mean_square_per_position(model, calib_ids, make_policy):  # type: ignore[no-untyped-def]
    hist = _history(model, calib_ids, make_policy)
    x = _capture_input(model.model.layers[1].mlp.down_proj,
                       lambda: reference_logits(model, calib_ids))
    sq = hist.mlp[1].sq
    assert sq.shape == (40, 128) and hist.calib_len == 24
    assert torch.allclose(sq[:24], (x.double() ** 2).mean(0).float(), rtol=1e-5)
    assert torch.allclose(sq[24:], sq[1:24].mean(0).expand(16, -1), rtol=1e-5)
    assert torch.allclose(hist.mlp[1].mean, x.double().mean(dim=(0, 1)).float(), atol=1e-6)


def test_layout_skips_layers_and_rescales_ratio(model, make_policy):  # type: ignore[no-untyped-def]
    gates = layer_gates(model, shape_of(model), make_policy(0.3, skip=(0,), round_to=8))
    assert gates[0].ratio == 0.0 and gates[0].mlp.kind is GateKind.DENSE
    assert all(g.ratio == 0.4 for g in gates[1:])  # round(4/3 * 0.3, 2)
    assert gates[1].mlp.keep == 80 and gates[1].attn.keep == 6 - int(0.4 * 6)
    assert gates[1].mlp.kind is GateKind.DYNAMIC


def test_static_plan_composition(calib_ids, make_policy):  # type: ignore[no-untyped-def]
    model = tiny_llama(5, TinyConfig(layers=5))
    shape = shape_of(model)
    apply_plan_(model, random_plan(shape, seed=4, p_remove=0.3), shape)
    hist = _history(model, calib_ids, make_policy)
    ids = _batch(4, 18, 3)
    dense = ProbeRunner(model, shape, make_policy(0.0), hist)
    assert relative_error(dense.run(ids), reference_logits(model, ids)) <= TOL
    gates = layer_gates(model, shape, make_policy(0.4))
    for g, layer in zip(gates, model.model.layers):
        assert (g.attn is None) == (type(layer.self_attn).__name__ == "ZeroAttention")
        assert g.mlp is None or g.mlp.width == layer.mlp.down_proj.weight.shape[1]
    runner = ProbeRunner(model, shape, make_policy(0.4), hist)
    for b, t in ((4, 18), (2, 40), (7, 9)):
        assert torch.isfinite(runner.run(_batch(b, t, b))).all()
    with pytest.raises(ValueError, match="max_len"):
        runner.run(_batch(1, 41, 0))


@pytest.mark.parametrize("metric", [ProbeMetric.WANDA_SP, ProbeMetric.FLAP])
def test_static_baselines(model, calib_ids, make_policy, metric):  # type: ignore[no-untyped-def]
    hist = _history(model, calib_ids, make_policy)
    policy = make_policy(0.5, metric=metric, targets=(ProbeTarget.MLP,), skip=ONLY_LAYER_2)
    runner = ProbeRunner(model, shape_of(model), policy, hist)
    block = next(b for b in runner.gated.blocks if b.gate.kind is GateKind.STATIC)
    stats, w = hist.mlp[LAYER], model.model.layers[LAYER].mlp.down_proj.weight.double()
    e2 = stats.sq[:24].double().mean(0)
    if metric is ProbeMetric.WANDA_SP:
        score = (w.abs() * e2.sqrt()).sum(0)
    else:
        score = (e2 - stats.mean.double() ** 2) * (w ** 2).sum(0)
    keep = block.gate.keep
    assert set(block.static_idx.tolist()) == set(torch.topk(score, keep).indices.tolist())
    ids = _batch(3, 12, 5)
    ref = _zeroed_copy(model, range(6), block.static_idx.tolist())
    want = reference_logits(ref, ids)
    if metric is ProbeMetric.FLAP:
        dropped = sorted(set(range(128)) - set(block.static_idx.tolist()))
        bias = w[:, dropped] @ stats.mean.double()[dropped]
        assert torch.allclose(block.bias.double(), bias, atol=1e-6)
        ref.model.layers[LAYER].mlp.down_proj.bias = torch.nn.Parameter(bias.float())
        want = reference_logits(ref, ids)
    assert relative_error(runner.run(ids), want) <= TOL
    assert runner.state == []
