"""The ``probe { mode = prompt }`` ONNX artifact (runtime.prompt_mode) against the PyTorch
reference (passes.probe.prompt.PromptRunner, itself checked against HF modules in
test_prompt_mode) on tiny HF models with biases: a Llama with every projection bias and
``compensate = on``, and a Qwen2 (q/k/v biases, untied head) narrowed by a static plan first
(removed blocks: fewer caches). The prefill chooses the reference's kept sets per sequence;
teacher-forced and step-by-step decode logits agree within 1e-4 (``relative_error``) over 32
greedy steps; ``Generator`` decodes the reference's greedy tokens; every graph is free of
If/Loop/Scan/NonZero and its inputs/outputs are the manifest's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_probe_biases import MAX_LEN, hf_model

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import KeptScope, ProbeMode
from prunec.passes.probe import PromptRunner, calibrate_history
from prunec.passes.reference import relative_error, shape_of
from prunec.runtime.gated import GatedSession, check_static_gating, export_gated_onnx
from prunec.runtime.generate import Generator, SamplingConfig
from prunec.runtime.prompt_mode import PromptSession

TOL = 1e-4
P, STEPS = 8, 32  # P + STEPS == MAX_LEN: the history's last position is used


def tokens(seed: int, b: int, t: int) -> torch.Tensor:
    return torch.randint(0, 160, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module",
                params=["llama-all-bias", "qwen2-static-plan", "llama-all-bias-per-batch"])
def artifact(request: Any, tmp_path_factory: pytest.TempPathFactory, calib_ids: torch.Tensor,
             make_policy: Any) -> tuple[Path, PromptRunner]:
    """(artifact, reference): compensating llama with biases and per-sequence sets, qwen2
    after a static plan, and llama with one kept set per batch (``kept = per-batch``,
    probing every prompt of the batch, compensating); the llama graphs with onnxruntime's
    fused kernels (``fuse = on``, the default for prompt mode), qwen2's plain."""
    per_batch = request.param.endswith("-per-batch")
    model = hf_model(request.param.removesuffix("-per-batch"))
    policy = make_policy(0.4, ProbeMode.PROMPT, compensate=request.param != "qwen2-static-plan",
                         kept=KeptScope.PER_BATCH if per_batch else KeptScope.PER_SEQUENCE,
                         sample_fraction=1.0 if per_batch else 0.05)
    hist = calibrate_history(model, shape_of(model), policy, calib_ids, max_len=MAX_LEN)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_gated_onnx(model, shape_of(model), policy, hist, path,
                      fuse=request.param != "qwen2-static-plan")
    return path, PromptRunner(model, shape_of(model), policy, hist)


def test_prefill_chooses_the_reference_kept_sets(artifact: tuple[Path, PromptRunner]) -> None:
    path, run = artifact
    session = PromptSession(path)
    ids = tokens(1, 3, 30)
    want = run.run(ids, 12)
    assert relative_error(torch.from_numpy(session.logits(ids.numpy(), 12)), want) <= TOL
    _, state = session.prefill(ids[:, :12].numpy())
    kept = state.kept[:len(run.last_kept)]  # then the probe means, when compensating
    assert len(kept) == len(run.last_kept) > 0
    for ref, got in zip(run.last_kept, kept):
        assert np.array_equal(got.numpy(), np.sort(ref.numpy(), axis=-1))
    if run.gated.block_list()[-1].settings.per_batch:  # one set: [1, keep]
        assert all(k.numpy().shape[0] == 1 for k in kept)
    else:
        assert any(not np.array_equal(k.numpy()[0], k.numpy()[1]) for k in kept)


def test_generator_decodes_the_reference_greedy_tokens(artifact: tuple[Path, PromptRunner]
                                                       ) -> None:
    """32 greedy steps through the generation API; the reference, teacher-forced on the
    result, picks every token and gives every step's logits (PromptSession, step by step)."""
    path, run = artifact
    assert_decodes_the_reference(path, run, tokens(2, 2, P))


def assert_decodes_the_reference(path: Path, run: PromptRunner, prompts: torch.Tensor) -> None:
    """``STEPS`` greedy tokens of the artifact at ``path`` from ``prompts [b, p]``
    (``Generator``, EOS ignored) are ``run``'s argmax teacher-forced on them, and every
    step's logits (``PromptSession``, one token at a time) are ``run``'s within ``TOL``."""
    gen = Generator(path)
    gen.manifest = dataclasses.replace(gen.manifest, eos=())  # decode every step asked for
    b, p = prompts.shape
    out = gen.generate(prompts.tolist(), SamplingConfig(max_new_tokens=STEPS))
    seq = torch.cat([prompts, torch.tensor(out.tokens)], dim=1)
    want = run.run(seq, p)[:, p - 1:p - 1 + STEPS]
    assert torch.equal(want.argmax(-1), torch.tensor(out.tokens))
    session = PromptSession(path)
    first, state = session.prefill(prompts.numpy())
    steps = [first[:, -1]]
    for i in range(STEPS - 1):
        pos = np.full((b, 1), p + i, dtype=np.int64)
        steps.append(session.decode(seq[:, p + i:p + i + 1].numpy(), pos, state)[:, -1])
    assert relative_error(torch.from_numpy(np.stack(steps, axis=1)), want) <= TOL


def test_padded_or_one_token_prompts_are_a_diagnostic(
        artifact: tuple[Path, PromptRunner]) -> None:
    with pytest.raises(CompileError) as err:
        Generator(artifact[0]).generate([[5, 6, 7], [8, 9]], SamplingConfig(max_new_tokens=2))
    assert [d.code for d in err.value.diagnostics] == ["P0407"]
    assert "one length" in err.value.diagnostics[0].message
    with pytest.raises(CompileError) as err:  # the probe takes two prompt positions
        Generator(artifact[0]).generate([[5]], SamplingConfig(max_new_tokens=2))
    assert [d.code for d in err.value.diagnostics] == ["P0407"]


def test_graphs_are_static_and_the_manifest_lists_their_io(artifact: tuple[Path, PromptRunner]
                                                           ) -> None:
    import onnxruntime as ort

    path = artifact[0]
    manifest = json.loads(path.with_suffix(".gating.json").read_text())
    assert manifest["policy"]["mode"] == "prompt" and set(manifest["graphs"]) == {
        "prefill", "gather", "decode"}
    fused = "qwen2" not in str(path)
    for graph in ("prefill", "decode"):
        assert bool(manifest["fusions"][graph].get("skip_rms_normalization")) == fused
    # every norm and rotary of the prefill fuses (the probe shares no node with them)
    assert manifest["fusions"]["prefill"] == manifest["fusions"]["decode"]
    for graph in manifest["graphs"].values():
        file = path.with_name(graph["file"])
        assert check_static_gating(file) == [] and graph["bytes"] >= file.stat().st_size
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [v["name"] for v in graph["inputs"]]
        assert [o.name for o in session.get_outputs()] == [v["name"] for v in graph["outputs"]]
    weights = [v for v in manifest["graphs"]["decode"]["inputs"] if v["name"].startswith("w.")]
    per_batch = manifest["policy"]["kept"] == "per-batch"
    assert weights and all((w["shape"][0] == "batch") != per_batch for w in weights)
    with pytest.raises(CompileError) as err:  # the per-batch runtime refuses it
        GatedSession(path)
    assert [d.code for d in err.value.diagnostics] == ["P0404"]


@pytest.mark.slow
def test_smollm2_prompt_onnx_matches_the_reference(tmp_path: Path, make_policy: Any,
                                                   smollm2: Any) -> None:
    """SmolLM2 at the spec's 40% (27 gated layers, compensate): KJV prompts of 32 tokens, the
    same kept sets and logits within 1e-4 at prefill and over 8 greedy steps."""
    loaded, text = smollm2, smollm2.text

    model, shape = loaded.model, shape_of(loaded.model)
    policy = make_policy(0.4, ProbeMode.PROMPT, skip=(0, 1, 2), round_to=64, compensate=True)
    hist = calibrate_history(model, shape, policy, text("kjv-calib.txt", 8, 64), max_len=64)
    export_gated_onnx(model, shape, policy, hist, tmp_path / "model.onnx")
    run = PromptRunner(model, shape, policy, hist)
    gen = Generator(tmp_path / "model.onnx")
    gen.manifest = dataclasses.replace(gen.manifest, eos=())
    prompts = text("kjv-eval.txt", 2, 32)
    out = gen.generate(prompts.tolist(), SamplingConfig(max_new_tokens=8))
    seq = torch.cat([prompts, torch.tensor(out.tokens)], dim=1)
    want = run.run(seq, 32)
    assert torch.equal(want[:, 31:39].argmax(-1), torch.tensor(out.tokens))
    session = PromptSession(tmp_path / "model.onnx")
    assert relative_error(torch.from_numpy(session.logits(seq.numpy(), 32)), want) <= TOL
    _, state = session.prefill(prompts.numpy())
    for ref, got in zip(run.last_kept, state.kept):
        assert np.array_equal(got.numpy(), np.sort(ref.numpy(), axis=-1))
