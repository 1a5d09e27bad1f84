"""Probe Pruning on the families beyond Llama (Qwen3, Phi-3, Gemma 2, Gemma 3 text) against
transformers' own modules, not against prunec's gated model.

Tiny random models built from each family's own transformers config class
(``tinymodels.tiny_model``) with q/k/v and o_proj biases (``attention_bias``; HF draws them
at zero, ``tiny_model`` perturbs every 1-d parameter) and the family's features at a visible
size: Qwen3's q_norm/k_norm, Phi-3's fused qkv_proj / gate_up_proj (no biases: transformers
builds them without) and partial rotary, Gemma's scaled embedding, (1 + w) sandwich norms, GELU-tanh
MLP and query_pre_attn_scalar, Gemma 2's attention and final soft-capping, Gemma 3's local
and global rope. Sliding windows are 64 tokens, wider than ``MAX_LEN`` (a narrower one is
P0226). Independent reference: the HF model whose skipped heads' o_proj columns and skipped
channels' down_proj columns are zeroed for the kept sets the gated run chose on that very
batch (``test_probe_biases.zeroed``), batch after batch while H evolves; and the gated ONNX
(the artifact the build writes) chooses the same kept sets as the eager gated model and
gives its logits, all within ``relative_error`` <= 1e-4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_probe_biases import zeroed
from tinymodels import FAMILY_EXTRAS, TinyConfig, random_plan, tiny_model
from torch import nn

from prunec.compiler.families import family
from prunec.compiler.ir import ProbePolicy
from prunec.passes.probe import ProbeRunner, calibrate_history
from prunec.passes.probe.history import History
from prunec.passes.probe.model import GatedAttention
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
TINY = TinyConfig(layers=3, heads=8, kv_heads=4, head_dim=8, attention_bias=True)
HEAD_DIM = TINY.head_dim
BATCHES = ((4, 24), (2, 10), (5, 40))
FAMILIES = ("qwen3", "phi3", "gemma2", "gemma3_text")


def family_model(name: str) -> nn.Module:
    """A tiny random ``name`` model whose sliding layers (if any) see all ``MAX_LEN``."""
    return tiny_model(name, seed=2, config=TINY,
                      extras={**FAMILY_EXTRAS.get(name, {}), "sliding_window": 64})


def _batch(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(0, TINY.vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def _runner(model: nn.Module, calib: torch.Tensor, policy: ProbePolicy) -> ProbeRunner:
    shape = shape_of(model)
    return ProbeRunner(model, shape, policy, _history(model, calib, policy))


def _history(model: nn.Module, calib: torch.Tensor, policy: ProbePolicy) -> History:
    return calibrate_history(model, shape_of(model), policy, calib, max_len=MAX_LEN)


@pytest.fixture(scope="module", params=FAMILIES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_support_table_says_probe(name: str) -> None:
    assert family(name).probe  # and prompt mode: test_prompt_families.py


def test_models_have_their_family_features(name: str, calib_ids: torch.Tensor,
                                           make_policy: Any) -> None:
    """The fixtures carry what the test claims to cover (a guard on the tests)."""
    model: Any = family_model(name)
    layer = decoder_layers(model)[0]
    if name == "phi3":  # fused projections, half the head dims rotate
        assert hasattr(layer.self_attn, "qkv_proj") and hasattr(layer.mlp, "gate_up_proj")
        assert model.model.rotary_emb(torch.zeros(1), torch.arange(2)[None])[0].shape[-1] == 4
    else:
        assert layer.self_attn.q_proj.bias is not None
        assert layer.self_attn.q_proj.bias.abs().sum() > 0
    assert hasattr(layer.self_attn, "q_norm") == (name not in ("gemma2", "phi3"))
    assert hasattr(layer, "pre_feedforward_layernorm") == name.startswith("gemma")
    gated = _runner(model, calib_ids, make_policy(0.5)).gated
    if name == "gemma2":
        assert model.config.attn_logit_softcapping and model.config.final_logit_softcapping
        assert gated.logit_cap == model.config.final_logit_softcapping
    if name == "gemma3_text":  # sliding and full layers rotate with different bases
        kinds = {b.rope_kind for b in gated.block_list() if isinstance(b, GatedAttention)}
        assert gated.n_ropes == 2 and kinds == {0, 1}
        assert not torch.allclose(gated.cos, gated.cos1)


def test_ratio_zero_is_the_hf_model(name: str, calib_ids: torch.Tensor,
                                    make_policy: Any) -> None:
    model = family_model(name)
    runner = _runner(model, calib_ids, make_policy(0.0))
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, i)
        assert relative_error(runner.run(ids), reference_logits(model, ids)) <= TOL, i


def test_gated_batches_equal_the_zeroed_hf_model(name: str, calib_ids: torch.Tensor,
                                                  make_policy: Any) -> None:
    model = family_model(name)
    runner = _runner(model, calib_ids, make_policy(0.5, momentum=0.9))
    assert len(runner.gated.history_names) == 4  # heads and channels of layers 1 and 2
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 10 + i)
        got = runner.run(ids)
        kept = {n: k.tolist() for n, k in zip(runner.gated.history_names, runner.last_kept)}
        want = reference_logits(zeroed(model, kept, HEAD_DIM), ids)
        assert relative_error(got, want) <= TOL, i
        assert relative_error(got, reference_logits(model, ids)) > 10 * TOL  # units skipped


@pytest.fixture(scope="module", params=("qwen3", "phi3", "gemma3_text"))
def exported(request: pytest.FixtureRequest, calib_ids: torch.Tensor, make_policy: Any,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Any, Path]:
    """(model, policy, artifact directory) of a debug export (kept sets as outputs)."""
    model = family_model(str(request.param))
    policy = make_policy(0.5, momentum=0.9)
    path = tmp_path_factory.mktemp(str(request.param)) / "gated.onnx"
    export_gated_onnx(model, shape_of(model), policy, _history(model, calib_ids, policy),
                      path, debug=True)
    return model, policy, path.parent


def test_onnx_equals_the_eager_gated_model(exported: tuple[nn.Module, Any, Path],
                                           calib_ids: torch.Tensor) -> None:
    model, policy, directory = exported
    runner, session = _runner(model, calib_ids, policy), GatedSession(directory)
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 20 + i)
        got = torch.from_numpy(session.run(ids.numpy()))
        assert relative_error(got, runner.run(ids)) <= TOL, i
        eager = {n.replace("history.", "kept.", 1): sorted(k.tolist())
                 for n, k in zip(runner.gated.history_names, runner.last_kept)}
        assert {n: sorted(v.tolist()) for n, v in session.kept.items()} == eager, i
        want = reference_logits(zeroed(model, eager, HEAD_DIM), ids)
        assert relative_error(got, want) <= TOL, i


def test_phi3_after_a_static_plan_reads_the_cut_fused_projections(
        calib_ids: torch.Tensor, make_policy: Any) -> None:
    """A static plan cuts Phi-3's fused qkv_proj / gate_up_proj (whole KV groups included);
    the gated blocks split what is left: dense at ratio 0, the zeroed pruned model at 0.5."""
    model: Any = family_model("phi3")
    shape = shape_of(model)
    plan = random_plan(shape, seed=5, p_remove=0.0)
    assert any(len(lp.kv_groups_kept(shape)) < shape.n_kv_heads for lp in plan.layers)
    apply_plan_(model, plan, shape)
    dense = _runner(model, calib_ids, make_policy(0.0))
    runner = _runner(model, calib_ids, make_policy(0.5, momentum=0.9))
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 30 + i)
        assert relative_error(dense.run(ids), reference_logits(model, ids)) <= TOL, i
        got = runner.run(ids)
        kept = {n: k.tolist() for n, k in zip(runner.gated.history_names, runner.last_kept)}
        assert relative_error(got, reference_logits(zeroed(model, kept, HEAD_DIM), ids)) <= TOL


def _longrope_phi3(original: int) -> nn.Module:
    """A tiny Phi-3 with longrope scaling whose long factors differ from its short ones
    (the validator sizes the factors by hidden // heads, so hidden = heads * head_dim)."""
    extras = {**FAMILY_EXTRAS["phi3"], "original_max_position_embeddings": original,
              "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5],
                               "long_factor": [4.0, 8.0]}}
    config = TinyConfig(hidden=64, layers=3, heads=8, kv_heads=4, head_dim=8)
    return tiny_model("phi3", seed=3, config=config, extras=extras)


def test_phi3_longrope_is_gated_up_to_its_original_length(calib_ids: torch.Tensor,
                                                           make_policy: Any) -> None:
    """Longrope's tables switch to the long factors once a call is longer than
    original_max_position_embeddings: gated up to there (HF's short tables, scaled), refused
    beyond (one table cannot be both)."""
    policy = make_policy(0.0)
    short = _longrope_phi3(MAX_LEN)
    runner = _runner(short, calib_ids, policy)
    for i, (b, t) in enumerate(BATCHES):
        ids = _batch(b, t, 40 + i)
        assert relative_error(runner.run(ids), reference_logits(short, ids)) <= TOL, i
    long = _longrope_phi3(MAX_LEN - 1)
    with pytest.raises(ValueError, match=f"changes beyond {MAX_LEN - 1} tokens, shorter than "
                                         f"the gated graph's max_len {MAX_LEN}"):
        _runner(long, calib_ids, policy)


def test_a_fused_projection_with_a_bias_is_refused(calib_ids: torch.Tensor,
                                                   make_policy: Any) -> None:
    model: Any = family_model("phi3")
    qkv = decoder_layers(model)[1].self_attn.qkv_proj
    qkv.bias = nn.Parameter(torch.ones(qkv.out_features))
    with pytest.raises(ValueError, match="qkv_proj has a bias"):
        _runner(model, calib_ids, make_policy(0.5))
