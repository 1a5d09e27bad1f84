"""End to end on the demo model: `prunec build` of a manual plan on SmolLM2-135M (slow).

Checks the artifact against the module-level reference: the ONNX perplexity of the pruned
model equals PyTorch's (``passes.reference.apply_plan_``) within 1e-4 relative, and the ONNX
weight count equals the plan's.
"""

from __future__ import annotations

import json
from pathlib import Path

import buildkit
import pytest

from prunec.compiler.ir import DType, ModelDecl, ModelSource
from prunec.compiler.plan import Plan
from prunec.runtime.cli import main

SPEC = """\
name = "smollm2-manual-small"
model demo

dataset heldout text "EVAL" {
  samples = 8
  seq_len = 128
}

plan {
  remove layers[24].attn
  keep 1280 channels in layers[10..15]
  keep 6 heads in layers[16]
  keep heads [0, 1, 2] in layers[17]
}

evaluate = [heldout]

gates {
  perplexity(heldout) <= 4x dense
  params <= 131M
}

export onnx "model.onnx"
"""


@pytest.mark.slow
def test_smollm2_manual_build_matches_reference(tmp_path: Path) -> None:
    from prunec.passes.reference import apply_plan_
    from prunec.runtime.data import load_dataset
    from prunec.runtime.evaluate import perplexity, torch_logits
    from prunec.runtime.models import load_model

    spec = tmp_path / "small.prune"
    spec.write_text(SPEC.replace("EVAL", str(buildkit.KJV_EVAL)))
    out = tmp_path / "art"
    assert main(["build", str(spec), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["params"]["agree"]
    assert report["params"]["pruned"] < report["params"]["dense"] == 134_515_008
    ppl = report["perplexity"]["heldout"]
    assert 5 < ppl["dense"]["ppl"] < 60 and ppl["pruned"]["ppl"] > ppl["dense"]["ppl"]

    loaded = load_model(ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, buildkit.SPAN),
                        tmp_path)
    plan = Plan.from_json(json.loads((out / "plan.json").read_text()))
    apply_plan_(loaded.model, plan, loaded.shape)
    decl = buildkit.dataset("heldout", buildkit.KJV_EVAL, samples=8, seq_len=128)
    ref = perplexity(torch_logits(loaded.model), load_dataset(decl, tmp_path, loaded.tokenizer))
    assert ppl["pruned"]["ppl"] == pytest.approx(ref.ppl, rel=1e-4)
