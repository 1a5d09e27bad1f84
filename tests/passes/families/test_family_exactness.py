"""Every family of the support table (``compiler.families``), on tiny random models built
from the family's own transformers config class (``tinymodels.tiny_model``).

Two independent exactness checks, ``max|onnx - ref| / max|ref| <= 1e-4``:
- the pruned ONNX equals the module-level pruned reference (``passes.reference``) on random
  plans (removed blocks, channel and head cuts, whole KV groups), with ``fuse`` off and on
  and with the KV cache off and on (cached: prefill, then one decode step with the cache);
- the pruned ONNX equals the UNPRUNED Hugging Face model whose removed units' output
  columns are zeroed (o_proj columns of removed heads, down_proj columns of removed
  channels, all of o_proj / down_proj for a removed block), so the check does not rely on
  prunec's own reference.
The tiny shapes use an explicit head_dim (8) that differs from hidden / heads (96 / 8), and
each family's own features at a visible size (``tinymodels.FAMILY_EXTRAS``: 4-token sliding
windows, so the cached graphs of Mistral, Qwen2 and Gemma decode past the window). Llama is
covered by ``tests/runtime/test_export_onnx.py`` and ``test_export_kv.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tinymodels import FAMILY_CLASSES, TinyConfig, random_plan, tiny_model, torch_threads

from prunec.compiler.families import family
from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.passes.reference import (
    apply_plan_,
    decoder_layers,
    head_rows,
    projection_weight,
    reference_logits,
    relative_error,
    shape_of,
)
from prunec.runtime.backends import CompileJob, graph_compile

TINY = TinyConfig(layers=3, heads=8, kv_heads=4, head_dim=8)
FAMILIES = sorted(FAMILY_CLASSES)
# (plan seed, fuse, kv_cache)
SETTINGS = [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module", params=FAMILIES)
def model(request: pytest.FixtureRequest) -> Any:
    return tiny_model(request.param, seed=len(request.param), config=TINY)


def compile_onnx(model: Any, plan: Plan, path: Path, fuse: bool, kv_cache: bool) -> Any:
    """The pruned graph in an onnxruntime CPU session (one thread)."""
    import onnxruntime as ort

    job = CompileJob(model, plan, shape_of(model), path, 18, None,  # type: ignore[arg-type]
                     fuse=fuse, kv_cache=kv_cache)
    graph_compile(job)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_uncached(session: Any, ids: torch.Tensor) -> torch.Tensor:
    (logits,) = session.run(["logits"], {"input_ids": ids.numpy()})
    return torch.from_numpy(logits)


def run_cached(session: Any, ids: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """Prefill all tokens but the last at past 0, then decode the last one with the cache;
    the logits of every position."""
    names = [i.name for i in session.get_inputs()]
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    b, s = ids.shape
    feeds = {"input_ids": ids[:, :-1].numpy(), "attention_mask": np.ones((b, s - 1), np.int64),
             "position_ids": np.tile(np.arange(s - 1), (b, 1)),
             **{p.name: np.zeros((b, p.shape[1], 0, shape.head_dim), np.float32)
                for p in pasts}}
    first, *present = session.run(None, feeds)
    step = {"input_ids": ids[:, -1:].numpy(), "attention_mask": np.ones((b, s), np.int64),
            "position_ids": np.full((b, 1), s - 1), **dict(zip(names[3:], present))}
    last = session.run(["logits"], step)[0]
    return torch.from_numpy(np.concatenate([first, last], axis=1))


@pytest.mark.parametrize(("seed", "fuse", "kv_cache"), SETTINGS,
                         ids=["plain", "fused", "plain-cache", "fused-cache"])
def test_onnx_equals_module_reference(model: Any, seed: int, fuse: bool, kv_cache: bool,
                                      tmp_path: Path) -> None:
    shape = shape_of(model)
    row = family(shape.architecture)
    if (fuse and not row.fuse) or (kv_cache and not row.kv_cache):
        pytest.skip(f"{shape.architecture}: not in the support table")
    plan = random_plan(shape, seed, p_remove=0.3)
    session = compile_onnx(model, plan, tmp_path / "model.onnx", fuse, kv_cache)
    ids = torch.randint(0, TINY.vocab, (2, 11), generator=torch.Generator().manual_seed(seed))
    got = run_cached(session, ids, shape) if kv_cache else run_uncached(session, ids)
    want = reference_logits(apply_plan_(copy.deepcopy(model), plan, shape), ids)
    assert relative_error(got, want) <= 1e-4
    assert relative_error(want, reference_logits(model, ids)) > 1e-2, "the plan changes logits"


def zero_removed_(model: Any, plan: Plan, shape: ModelShape) -> Any:
    """The unpruned model with every removed unit's output columns zeroed (in place)."""
    with torch.no_grad():
        for layer, lp in zip(decoder_layers(model), plan.layers):
            o, down = layer.self_attn.o_proj, layer.mlp.down_proj
            if lp.attn_removed or lp.kept_heads is not None:
                kept = () if lp.attn_removed else lp.kept_heads
                gone = sorted(set(range(shape.n_heads)) - set(kept or ()))
                o.weight[:, head_rows(tuple(gone), shape.head_dim)] = 0.0
            if lp.mlp_removed or lp.kept_channels is not None:
                kept = () if lp.mlp_removed else lp.kept_channels
                down.weight[:, sorted(set(range(shape.intermediate)) - set(kept or ()))] = 0.0
            for linear, removed in ((o, lp.attn_removed), (down, lp.mlp_removed)):
                if removed and linear.bias is not None:
                    linear.bias.zero_()
    return model


@pytest.mark.parametrize("seed", [4])
def test_onnx_equals_zeroed_hf_model(model: Any, seed: int, tmp_path: Path) -> None:
    shape = shape_of(model)
    plan = random_plan(shape, seed, p_remove=0.3)
    session = compile_onnx(model, plan, tmp_path / "model.onnx", False, False)
    ids = torch.randint(0, TINY.vocab, (3, 9), generator=torch.Generator().manual_seed(seed))
    zeroed = zero_removed_(copy.deepcopy(model), plan, shape)
    assert relative_error(run_uncached(session, ids), reference_logits(zeroed, ids)) <= 1e-4


def test_fused_projections_are_split_at_capture() -> None:
    """Phi-3's qkv_proj / gate_up_proj become separate linears (``passes.unfuse``) holding
    the fused matrix's rows; the captured graph still computes the model's logits."""
    from prunec.passes.analysis import analyze, get_tensor, role
    from prunec.passes.capture import capture

    model = tiny_model("phi3", seed=3, config=TINY)
    gm = capture(model)
    assert not [n for n in gm.graph.nodes if (role(n) or (0, ""))[1].endswith("fused")
                or (role(n) or (0, ""))[1] in ("qkv_proj", "gate_up_proj")]
    layer = analyze(gm, shape_of(model)).layers[1]
    fused = model.model.layers[1].self_attn.qkv_proj.weight
    assert torch.equal(get_tensor(gm, layer.attention.k.weight), fused[64:96])
    up = model.model.layers[1].mlp.gate_up_proj.weight
    assert torch.equal(get_tensor(gm, layer.mlp.up.weight), up[128:])
    dense = decoder_layers(model)[1]  # the module-level reading the scorers use agrees
    assert torch.equal(projection_weight(dense, "k_proj"), fused[64:96])
    assert torch.equal(projection_weight(dense, "up_proj"), up[128:])
    ids = torch.randint(0, TINY.vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    assert relative_error(gm(ids), reference_logits(model, ids)) <= 1e-6
