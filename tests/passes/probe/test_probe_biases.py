"""Gated models with projection biases against HF's own modules (not against ``GatedModel``).

Tiny random HF models: a plain Llama, a Llama with ``attention_bias`` (q/k/v and o_proj
biases), one with ``mlp_bias`` as well (gate/up/down biases), a Qwen2 (q/k/v biases, no
o_proj bias, untied head) and a Qwen2 narrowed by a random static plan first. Biases are
drawn at random (HF initialises them to zero, which would hide a gated model that drops
them). Independent reference: the HF model itself, at ratio 0 whole, at a nonzero ratio a
copy whose skipped heads' o_proj columns and skipped channels' down_proj columns are zeroed
for the kept sets the gated model recorded for that very batch (output biases stay: they
belong to no unit). Both the eager gated model and the gated ONNX on onnxruntime must match
within ``relative_error`` <= 1e-4, batch after batch while H evolves.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tinymodels import random_plan
from torch import nn

from prunec.compiler.ir import ProbeMetric, ProbeMode, ProbePolicy, ProbeTarget
from prunec.passes.probe import GateKind, ProbeRunner, calibrate_history
from prunec.passes.probe.history import History
from prunec.passes.reference import (
    apply_plan_,
    decoder_layers,
    reference_logits,
    relative_error,
    shape_of,
)
from prunec.runtime.gated import GatedSession, export_gated_onnx

TOL = 1e-4
MAX_LEN = 40
BATCHES = ((4, 24), (2, 10), (5, 40))
KINDS = ("llama", "llama-attention-bias", "llama-all-bias", "qwen2", "qwen2-static-plan")
# exports are the slow part: every bias path once (the plain Llama's ONNX equals its eager
# gated model in test_probe_onnx, which equals HF here)
ONNX_KINDS = ("llama-all-bias", "qwen2", "qwen2-static-plan")


def _config(kind: str) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": 160, "hidden_size": 96, "intermediate_size": 128,
        "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 512}
    if kind.startswith("qwen2"):
        return Qwen2Config(**common, tie_word_embeddings=False)
    return LlamaConfig(**common, tie_word_embeddings=True, attention_bias=kind != "llama",
                       mlp_bias=kind == "llama-all-bias")


def hf_model(kind: str, seed: int = 0) -> nn.Module:
    """A random tiny HF causal LM of ``kind`` with random (non-zero) biases, in eval mode."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = Qwen2ForCausalLM if kind.startswith("qwen2") else LlamaForCausalLM
    torch.manual_seed(seed)
    model: nn.Module = cls(_config(kind))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.3)
    if kind == "qwen2-static-plan":
        shape = shape_of(model)
        apply_plan_(model, random_plan(shape, seed=3, p_remove=0.2), shape)
    return model.eval()


def test_a_short_sliding_window_is_refused(calib_ids: torch.Tensor, make_policy: Any) -> None:
    """The gated attention is fully causal: a Qwen2 whose layers slide over fewer positions
    than H holds cannot be gated silently wrong."""
    from transformers import Qwen2ForCausalLM

    cfg = _config("qwen2")
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 8, 0
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    model = Qwen2ForCausalLM(cfg).eval()
    hist = _history(model, calib_ids, make_policy(0.0))
    with pytest.raises(ValueError, match="sliding window of 8 tokens, shorter than .* max_len 40"):
        ProbeRunner(model, shape_of(model), make_policy(0.0), hist)


def _bias_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.endswith(".bias")]


def _batch(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 160, (b, t), generator=torch.Generator().manual_seed(seed))


def zeroed(model: nn.Module, kept: Mapping[str, Sequence[int]], head_dim: int) -> nn.Module:
    """A copy of ``model`` whose units outside ``kept`` (``{"history.L.attn": heads,
    "history.L.mlp": channels}``, or ``kept.L.*``) contribute nothing: their o_proj /
    down_proj columns are zero."""
    ref = copy.deepcopy(model)
    layers = decoder_layers(ref)
    with torch.no_grad():
        for name, units in kept.items():
            _, layer, kind = name.split(".")
            if kind == "attn":
                o = layers[int(layer)].self_attn.o_proj.weight
                for h in set(range(o.shape[1] // head_dim)) - set(units):
                    o[:, h * head_dim:(h + 1) * head_dim] = 0
            else:
                down = layers[int(layer)].mlp.down_proj.weight
                down[:, sorted(set(range(down.shape[1])) - set(units))] = 0
    return ref


def _history(model: nn.Module, calib: torch.Tensor, policy: ProbePolicy) -> History:
    return calibrate_history(model, shape_of(model), policy, calib, max_len=MAX_LEN)


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_models_have_the_biases_they_claim() -> None:
    """The fixtures are what the names say (a guard on the tests, not on prunec)."""
    layer_bias = {k: {n.split("layers.0.")[1] for n in _bias_names(hf_model(k))
                      if "layers.0." in n} for k in KINDS[:4]}
    qkv = {f"self_attn.{p}_proj.bias" for p in "qkv"}
    assert layer_bias["llama"] == set()
    assert layer_bias["llama-attention-bias"] == qkv | {"self_attn.o_proj.bias"}
    assert layer_bias["llama-all-bias"] == qkv | {"self_attn.o_proj.bias"} | {
        f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")}
    assert layer_bias["qwen2"] == qkv


def test_ratio_zero_is_the_hf_model(kind: str, calib_ids: torch.Tensor,
                                    make_policy: Any) -> None:
    model = hf_model(kind)
    runner = ProbeRunner(model, shape_of(model), make_policy(0.0),
                         _history(model, calib_ids, make_policy(0.0)))
    ids = _batch(3, 30, 2)
    want = reference_logits(model, ids)
    assert relative_error(runner.run(ids), want) <= TOL
    if _bias_names(model):  # the biases matter: dropping them is far outside the tolerance
        bare = copy.deepcopy(model)
        with torch.no_grad():
            for name in _bias_names(bare):
                bare.get_parameter(name).zero_()
        assert relative_error(reference_logits(bare, ids), want) > 100 * TOL


def test_gated_batches_equal_the_zeroed_hf_model(kind: str, calib_ids: torch.Tensor,
                                                  make_policy: Any) -> None:
    model = hf_model(kind)
    policy = make_policy(0.5, momentum=0.9)
    runner = ProbeRunner(model, shape_of(model), policy, _history(model, calib_ids, policy))
    assert runner.gated.history_names  # something is gated
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 10 + i)
        got = runner.run(ids)
        kept = {n: k.tolist() for n, k in zip(runner.gated.history_names, runner.last_kept)}
        want = reference_logits(zeroed(model, kept, 16), ids)
        assert relative_error(got, want) <= TOL, (i, kind)
        assert relative_error(got, reference_logits(model, ids)) > 10 * TOL  # units skipped


def test_flap_bias_adds_to_the_models_own_output_bias(calib_ids: torch.Tensor,
                                                      make_policy: Any) -> None:
    """FLAP (static) on a model with o_proj and down_proj biases: the gated block's output
    bias is the module's bias plus the compensation of the removed units."""
    model = hf_model("llama-all-bias")
    policy = make_policy(0.2, metric=ProbeMetric.FLAP, skip=(0, 2))  # layer 1 at ratio 0.6
    hist = _history(model, calib_ids, policy)
    runner = ProbeRunner(model, shape_of(model), policy, hist)
    attn, mlp = (b for b in runner.gated.blocks if b.gate.kind is GateKind.STATIC)
    dense = decoder_layers(model)[1]
    ref = zeroed(model, {"history.1.attn": attn.static_idx.tolist(),
                         "history.1.mlp": mlp.static_idx.tolist()}, 16)
    layer = decoder_layers(ref)[1]
    with torch.no_grad():
        for linear, w, stats, block, unit in (
                (layer.self_attn.o_proj, dense.self_attn.o_proj.weight, hist.attn[1], attn, 16),
                (layer.mlp.down_proj, dense.mlp.down_proj.weight, hist.mlp[1], mlp, 1)):
            removed = torch.ones(w.shape[1], dtype=torch.bool)
            for u in block.static_idx.tolist():
                removed[u * unit:(u + 1) * unit] = False
            linear.bias += w[:, removed] @ stats.mean[removed]
    ids = _batch(3, 20, 5)
    assert relative_error(runner.run(ids), reference_logits(ref, ids)) <= TOL


@pytest.mark.parametrize("target", [ProbeTarget.HEADS, ProbeTarget.MLP])
def test_probe_choice_sees_the_biases(calib_ids: torch.Tensor, make_policy: Any,
                                      target: ProbeTarget) -> None:
    """Full-batch probing of a biased Qwen2: the kept units are the top PPsp scores of the
    HF module's own o_proj / down_proj input (which carries the q/k/v biases)."""
    model = hf_model("qwen2")
    policy = make_policy(0.5, mode=ProbeMode.FULL_BATCH, targets=(target,), skip=(0, 2))
    hist = _history(model, calib_ids, policy)
    runner = ProbeRunner(model, shape_of(model), policy, hist)
    ids = _batch(4, 16, 9)
    runner.run(ids)
    (kept,) = runner.last_kept
    layer = decoder_layers(model)[1]
    linear = layer.self_attn.o_proj if target is ProbeTarget.HEADS else layer.mlp.down_proj
    seen: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    try:
        reference_logits(model, ids)
    finally:
        handle.remove()
    block = hist.attn[1] if target is ProbeTarget.HEADS else hist.mlp[1]
    p, h = seen[0].pow(2).mean(0), block.sq[:16]
    w = p / (p + h + 1e-6)
    s = ((1 - w) * h + w * p).sum(0) * linear.weight.pow(2).norm(dim=0)
    if target is ProbeTarget.HEADS:
        s = s.view(-1, 16).norm(dim=1)
    assert set(kept.tolist()) == set(torch.topk(s, len(kept)).indices.tolist())


@pytest.fixture(scope="module", params=ONNX_KINDS)
def exported(request: pytest.FixtureRequest, calib_ids: torch.Tensor, make_policy: Any,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, GatedSession]:
    kind = str(request.param)
    model = hf_model(kind)
    pol = make_policy(0.5, momentum=0.9)
    path = tmp_path_factory.mktemp(kind) / "gated.onnx"
    export_gated_onnx(model, shape_of(model), pol, _history(model, calib_ids, pol), path,
                      debug=True)
    return model, GatedSession(Path(path).parent)


def test_onnx_batches_equal_the_zeroed_hf_model(exported: tuple[nn.Module, GatedSession]
                                                ) -> None:
    model, session = exported
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 20 + i)
        got = torch.from_numpy(session.run(ids.numpy()))
        assert session.kept
        want = reference_logits(zeroed(model, {k: v.tolist() for k, v in session.kept.items()},
                                       16), ids)
        assert relative_error(got, want) <= TOL, i


def test_onnx_at_ratio_zero_is_the_hf_model(calib_ids: torch.Tensor, make_policy: Any,
                                            tmp_path: Path) -> None:
    model = hf_model("qwen2")
    policy = make_policy(0.0)
    info = export_gated_onnx(model, shape_of(model), policy,
                             _history(model, calib_ids, policy), tmp_path / "gated.onnx")
    assert info.history_inputs == ()
    session = GatedSession(tmp_path)
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 30 + i)
        got = torch.from_numpy(session.run(ids.numpy()))
        assert relative_error(got, reference_logits(model, ids)) <= TOL, i
