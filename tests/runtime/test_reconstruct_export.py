"""``export hf`` carries the reconstruction (refit weights and the biases the dense config
lacks): the directory loads back with the module reference's logits."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from tinymodels import tiny_llama

from prunec.compiler.ir import Reconstruct, StaticMethod
from prunec.passes.methods import compute_plan
from prunec.passes.reference import apply_plan_, apply_refit_, reference_logits, shape_of
from prunec.runtime.hf_export import export_hf, load_pruned_hf


def test_hf_export_carries_the_least_squares_refit(tiny_tok: Any, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "passes" / "methods"))
    from method_fixtures import calib_tokens, make_static

    dense, calib = tiny_llama(0), calib_tokens(samples=8, seq_len=24)
    shape = shape_of(dense)
    static = dataclasses.replace(make_static(StaticMethod.WANDA_SP, heads=0.5, mlp=0.5),
                                 reconstruct=Reconstruct.LEAST_SQUARES)
    result = compute_plan(static, dense, shape, calib)
    assert result.refit
    export_hf(dense, tiny_tok, result.plan, tmp_path / "hf", result.refit)
    model, _ = load_pruned_hf(tmp_path / "hf")
    want = apply_refit_(apply_plan_(copy.deepcopy(dense), result.plan, shape), result.refit,
                        result.plan, shape)
    ids = calib_tokens(samples=2, seq_len=12, seed=3)
    got_logits, want_logits = reference_logits(model, ids), reference_logits(want, ids)
    assert torch.allclose(got_logits, want_logits, rtol=0, atol=1e-5)
    plain = reference_logits(apply_plan_(copy.deepcopy(dense), result.plan, shape), ids)
    assert not torch.allclose(plain, want_logits, atol=1e-3), "the refit must matter here"
