"""``probe { mode = prompt }`` on the families beyond Llama (Qwen3, Phi-3, Gemma 2, Gemma 3
text): the PyTorch reference (``PromptRunner``) against transformers' own modules, and the
three-graph ONNX artifact against the reference.

Models are ``test_probe_families.family_model``'s: each family's own transformers config
class with q/k/v and o_proj biases and its features at a visible size (Qwen3's and Gemma 3's
q_norm/k_norm, Phi-3's fused projections and partial rotary, Gemma's scaled embedding,
(1 + w) sandwich norms, GELU-tanh MLP, query_pre_attn_scalar, Gemma 2's attention and final
soft-capping, Gemma 3's local and global rope), sliding windows wider than ``MAX_LEN``.
Independent reference (``test_prompt_mode.hf_decode``): prefill logits are the HF model's;
decode logits are HF decoding with the dense prefill's KV cache on a copy whose skipped
units (the kept sets the runner chose for that sequence) have zero o_proj / down_proj
columns. The ONNX prefill
chooses the reference's kept sets, and its logits (teacher-forced, then 32 greedy decode
steps through ``Generator`` and ``PromptSession``) agree within 1e-4 (``relative_error``).
Gemma 3's artifact compensates skipped units (the probe mean folded into the output bias,
inside the post-norm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_probe_families import MAX_LEN, family_model
from test_prompt_mode import assert_prefill_dense_decode_zeroed, ids
from test_prompt_onnx import assert_decodes_the_reference
from torch import nn

from prunec.compiler.families import family
from prunec.compiler.ir import ProbeMode, ProbePolicy
from prunec.passes.probe import PromptRunner, calibrate_history
from prunec.passes.probe.history import History
from prunec.passes.reference import relative_error, shape_of
from prunec.runtime.gated import export_gated_onnx
from prunec.runtime.prompt_mode import PromptSession

TOL = 1e-4
PROMPT = 8  # + test_prompt_onnx.STEPS (32) == MAX_LEN: the rope tables' last row is used
FAMILIES = ("qwen3", "phi3", "gemma2", "gemma3_text")


def _policy(make_policy: Any, compensate: bool = False) -> ProbePolicy:
    policy: ProbePolicy = make_policy(0.4, ProbeMode.PROMPT, compensate=compensate)
    return policy


def _history(model: nn.Module, calib: torch.Tensor, policy: ProbePolicy) -> History:
    return calibrate_history(model, shape_of(model), policy, calib, max_len=MAX_LEN)


def _runner(model: nn.Module, calib: torch.Tensor, policy: ProbePolicy) -> PromptRunner:
    return PromptRunner(model, shape_of(model), policy, _history(model, calib, policy))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_support_table_says_prompt_mode(name: str) -> None:
    assert family(name).probe and family(name).prompt


@pytest.mark.parametrize("name", FAMILIES)
def test_prefill_is_hf_and_decode_is_hf_zeroed_with_the_cache(
        name: str, calib_ids: torch.Tensor, make_policy: Any) -> None:
    model = family_model(name)
    run = _runner(model, calib_ids, _policy(make_policy))
    assert_prefill_dense_decode_zeroed(model, run, ids(1))
    assert len(run.gated.history_names) == 4  # heads and channels of layers 1 and 2


@pytest.fixture(scope="module", params=FAMILIES)
def artifact(request: pytest.FixtureRequest, calib_ids: torch.Tensor, make_policy: Any,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PromptRunner]:
    """(prefill graph path, reference runner) of a prompt-mode export with onnxruntime's
    fused kernels (``fuse = on``, the build's default for prompt mode)."""
    name = str(request.param)
    model = family_model(name)
    policy = _policy(make_policy, compensate=name == "gemma3_text")
    hist = _history(model, calib_ids, policy)
    path = tmp_path_factory.mktemp(name) / "model.onnx"
    export_gated_onnx(model, shape_of(model), policy, hist, path, fuse=True)
    return path, PromptRunner(model, shape_of(model), policy, hist)


def test_onnx_prefill_chooses_the_reference_kept_sets(artifact: tuple[Path, PromptRunner]
                                                      ) -> None:
    path, run = artifact
    session = PromptSession(path)
    batch = ids(3, t=30)
    want = run.run(batch, 12)
    assert relative_error(torch.from_numpy(session.logits(batch.numpy(), 12)), want) <= TOL
    _, state = session.prefill(batch[:, :12].numpy())
    kept = state.kept[:len(run.last_kept)]  # then the probe means, when compensating
    assert len(kept) == len(run.last_kept) == 4
    for ref, got in zip(run.last_kept, kept):
        assert np.array_equal(got.numpy(), np.sort(ref.numpy(), axis=-1))
    assert any(not np.array_equal(k.numpy()[0], k.numpy()[1]) for k in kept)


def test_onnx_decodes_the_reference_over_32_steps(artifact: tuple[Path, PromptRunner]) -> None:
    """Greedy tokens through the generation API are the reference's argmax, teacher-forced
    on the result; every step's logits (``PromptSession``, one token at a time) are its."""
    path, run = artifact
    assert_decodes_the_reference(path, run, ids(4, b=2, t=PROMPT))
