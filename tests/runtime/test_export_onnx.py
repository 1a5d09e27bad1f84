"""ONNX export: the pruned ONNX graph (onnxruntime, CPU) computes the reference logits.

Exactness: ``relative_error = max|onnx - ref| / max|ref| <= 1e-4`` where ``ref`` is the
module-level pruned model (``passes.reference.apply_plan_``), for the dense model and random
plans (random blocks, channel subsets, GQA head subsets including whole KV groups), at
several batch/seq sizes of ONE exported file (dynamic batch and seq).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tinymodels import TinyConfig, every_rule_plan, random_plan, tiny_llama, torch_threads

from prunec.compiler.plan import Plan, param_count
from prunec.passes.pipeline import prune_graph
from prunec.passes.reference import apply_plan_, reference_logits, relative_error, shape_of
from prunec.runtime.export import ExportConfig, export_onnx

SIZES = ((2, 1), (1, 2), (1, 19), (4, 7), (3, 64))
BIAS_UNTIED = TinyConfig(layers=3, heads=8, kv_heads=4, attention_bias=True, tied=False)


CASES = {
    "every-rule-gqa-tied": (TinyConfig(layers=3), every_rule_plan),
    "random-bias-untied": (BIAS_UNTIED, lambda shape: random_plan(shape, 5, p_remove=0.3)),
}


def onnx_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graph: threads only wait on each other
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": ids.numpy()})
    return torch.from_numpy(np.asarray(logits))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


FUSED_OPS = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
             "MultiHeadAttention"}  # onnxruntime kernels (the first in the default domain)


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_reference(case: str, fuse: bool, tmp_path: Path) -> None:
    config, make_plan = CASES[case]
    model = tiny_llama(len(case), config)
    shape = shape_of(model)
    plan = make_plan(shape)
    program, _ = prune_graph(model, plan, shape)
    info = export_onnx(program, tmp_path / "model.onnx", config=ExportConfig(fuse=fuse))
    ops = {n.op_type for n in onnx.load(str(info.path)).graph.node}
    if fuse:  # every kind of fusion found a match (attention: the layers that keep it)
        assert ops >= FUSED_OPS and set(info.fusions) >= {
            "rms_normalization", "skip_rms_normalization", "sdpa_via_mha"}
    else:
        assert not ops & FUSED_OPS and not info.fusions
    # weights shrink physically: the initializers are exactly the plan's parameters (q/k/v/o
    # biases included) plus the rotary inverse frequencies
    assert (shape.qkv_bias, shape.o_bias) == (config.attention_bias,) * 2
    if not fuse:  # (fusion folds constants: transposed weights, unit norm scales)
        assert info.parameters == param_count(shape, plan) + shape.head_dim // 2
    assert_matches(info.path, apply_plan_(copy.deepcopy(model), plan, shape), shape.vocab)


def assert_matches(path: Path, ref: torch.nn.Module, vocab: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for batch, seq in SIZES:
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        got = onnx_logits(path, ids)
        assert got.shape == (batch, seq, vocab)
        assert relative_error(got, reference_logits(ref, ids)) <= 1e-4, (batch, seq)


def test_dense_onnx_file_contract(tmp_path: Path) -> None:
    model = tiny_llama(1, TinyConfig(layers=2))
    shape = shape_of(model)
    program, _ = prune_graph(model, Plan.dense(shape), shape)
    info = export_onnx(program, tmp_path / "m.onnx", opset=18)
    assert_matches(info.path, model, shape.vocab)
    proto = onnx.load(str(info.path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("input_ids", onnx.TensorProto.INT64)
    assert (out.name, out.type.tensor_type.elem_type) == ("logits", onnx.TensorProto.FLOAT)
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[1], str) and dims[2] == shape.vocab
    assert not info.external_data and not (tmp_path / "m.onnx.data").exists()
    embeddings = [t for t in proto.graph.initializer if shape.vocab in t.dims]
    assert len(embeddings) == 1  # tied: one copy of the embedding matrix
    assert info.opset == 18 and proto.opset_import[0].version == 18


def test_output_bias_compensation_reaches_the_onnx_graph(tmp_path: Path) -> None:
    """FLAP's biases (added to o_proj / down_proj outputs) survive the width passes and the
    export: the ONNX logits equal apply_plan_ + apply_refit_ on the module."""
    import onnxruntime as ort

    from prunec.compiler.ir import Provider
    from prunec.passes.methods.types import LayerRefit
    from prunec.passes.reference import apply_refit_
    from prunec.runtime.backends import CompileJob, graph_compile

    model = tiny_llama(3, TinyConfig(layers=3))
    shape = shape_of(model)
    plan = every_rule_plan(shape)
    gen = torch.Generator().manual_seed(0)
    biases = {i: LayerRefit(torch.randn(shape.hidden, generator=gen),
                           torch.randn(shape.hidden, generator=gen)) for i in (0, 1, 2)}
    path = tmp_path / "model.onnx"
    job = CompileJob(model, plan, shape, path, 18, None, refit=biases)  # type: ignore[arg-type]
    with torch_threads(1):
        graph_compile(job)
        ref = apply_refit_(apply_plan_(copy.deepcopy(model), plan, shape), biases, plan, shape)
        ids = torch.randint(0, shape.vocab, (2, 11), generator=gen)
        want = reference_logits(ref, ids)
    sess = ort.InferenceSession(str(path), providers=[Provider.CPU.ort_name])
    got = torch.from_numpy(sess.run(["logits"], {"input_ids": ids.numpy()})[0])
    assert relative_error(got, want) <= 1e-4
    no_bias = reference_logits(apply_plan_(copy.deepcopy(model), plan, shape), ids)
    assert relative_error(no_bias, want) > 1e-2, "the biases must matter in this test"


def test_report_matrix_count_agrees_for_a_biased_model(tmp_path: Path) -> None:
    """report.json's ``expected_matrices`` (param_count less norms and, now that param_count
    counts them, the 1-D attention biases) equals the ONNX file's rank-2 initializers."""
    from prunec.runtime.report import onnx_counts, params_json

    model = tiny_llama(4, BIAS_UNTIED)
    shape = shape_of(model)
    plan = random_plan(shape, 9, p_remove=0.3)
    program, _ = prune_graph(model, plan, shape)
    info = export_onnx(program, tmp_path / "model.onnx")
    params = params_json(shape, plan, onnx_counts(info.path))
    assert shape.qkv_bias and shape.o_bias
    assert params["agree"] and params["pruned"] > params["expected_matrices"]
