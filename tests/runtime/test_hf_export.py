"""runtime.hf_export: a pruned model written as a directory loads back with the same logits."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from tinymodels import tiny_llama

from prunec.compiler.plan import Plan
from prunec.passes.reference import apply_plan_, shape_of
from prunec.runtime.hf_export import export_hf, load_pruned_hf


def test_roundtrip_keeps_logits(built: Any, tiny_tok: Any, tmp_path: Path) -> None:
    plan = Plan.from_json(json.loads((built.artifact / "plan.json").read_text()))
    dense = tiny_llama(0)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    export_hf(dense, tiny_tok, plan, tmp_path / "hf")
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items()), "unchanged"
    model, tok = load_pruned_hf(tmp_path / "hf")
    expected = apply_plan_(copy.deepcopy(dense), plan, shape_of(dense))
    ids = torch.tensor([tok("In the beginning God created")["input_ids"]])
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = expected(input_ids=ids).logits
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert model.model.layers[3].mlp.__class__.__name__ == "ZeroMLP"
