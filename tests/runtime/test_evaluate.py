"""runtime.evaluate: the perplexity definition, and ONNX == PyTorch on a tiny pruned model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import buildkit
import pytest
import torch
from test_session import lookup_model
from tinymodels import tiny_llama

from prunec.compiler.plan import Plan
from prunec.passes.reference import apply_plan_, sequence_nll, shape_of
from prunec.runtime.data import load_dataset
from prunec.runtime.evaluate import onnx_logits, perplexity, torch_logits
from prunec.runtime.session import open_session


def test_sequence_nll_is_mean_next_token_nll() -> None:
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    got = sequence_nll(logits, ids)
    for b in range(2):
        nll = [-torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]].item() for t in range(4)]
        assert got[b].item() == pytest.approx(sum(nll) / 4, rel=1e-6)


def test_uniform_model_has_perplexity_vocab() -> None:
    data = torch.randint(0, 50, (5, 9))
    result = perplexity(lambda b: torch.zeros(b.shape[0], b.shape[1], 50), data, batch_size=2)
    assert result.ppl == pytest.approx(50.0, rel=1e-6)  # log-softmax in float32
    assert (result.sequences, result.tokens) == (5, 40)


def test_perplexity_is_exp_of_mean_over_sequences() -> None:
    # sequence 0 is predicted perfectly by the lookup model, sequence 1 never
    data = torch.tensor([[1, 1, 1], [1, 2, 3]])
    table = torch.eye(4) * 30.0
    result = perplexity(lambda b: table[b], data, batch_size=1)
    nll1 = float(-torch.log_softmax(table[1], -1)[2] - torch.log_softmax(table[2], -1)[3]) / 2
    expected = math.exp((float(-torch.log_softmax(table[1], -1)[1]) + nll1) / 2)
    assert result.ppl == pytest.approx(expected, rel=1e-9)


def test_onnx_lookup_model(tmp_path: Path) -> None:
    session = open_session(lookup_model(tmp_path / "m.onnx", vocab=7)).session
    data = torch.randint(0, 7, (3, 6))
    table = torch.eye(7) * 2.0
    a = perplexity(onnx_logits(session), data, 2)
    b = perplexity(lambda x: table[x], data, 2)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-6)


def test_onnx_matches_pytorch_on_pruned_tiny_model(built: Any, tiny_tok: Any) -> None:
    artifact = built.artifact
    plan = Plan.from_json(json.loads((artifact / "plan.json").read_text()))
    dense = tiny_llama(0)
    pruned = apply_plan_(copy.deepcopy(dense), plan, shape_of(dense))
    decl = buildkit.dataset("eval", buildkit.KJV_EVAL, samples=6, seq_len=24, seed=5)
    data = load_dataset(decl, Path("/"), tiny_tok)
    session = open_session(artifact / "model.onnx").session
    ort = perplexity(onnx_logits(session), data, 4)
    ref = perplexity(torch_logits(pruned), data, 4)
    assert ort.ppl == pytest.approx(ref.ppl, rel=1e-4)
    assert ort.ppl != pytest.approx(perplexity(torch_logits(dense), data, 4).ppl, rel=1e-3)
    report = built.report["perplexity"]["eval"]
    assert report["pruned"]["ppl"] != pytest.approx(report["dense"]["ppl"], rel=1e-3)
