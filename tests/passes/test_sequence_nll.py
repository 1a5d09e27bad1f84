"""passes.reference.sequence_nll: one NLL for evaluation and search, float32 log-softmax."""

from __future__ import annotations

import pytest
import torch
from tinymodels import tiny_llama

from prunec.passes.methods.evaluator import head_nll
from prunec.passes.reference import sequence_nll

pytestmark = pytest.mark.usefixtures("one_thread")


def test_log_softmax_runs_in_float32_whatever_the_logits_dtype() -> None:
    torch.manual_seed(0)
    logits, ids = (torch.randn(3, 7, 50) * 8).bfloat16(), torch.randint(0, 50, (3, 7))
    got = sequence_nll(logits, ids)
    assert got.dtype is torch.float64
    assert torch.equal(got, sequence_nll(logits.float(), ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_search_scores_with_the_evaluation_nll(dtype: torch.dtype) -> None:
    model = tiny_llama(seed=3).to(dtype)
    ids = torch.randint(0, 160, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model.model(ids, use_cache=False).last_hidden_state
        logits = model(input_ids=ids, use_cache=False).logits
        assert torch.equal(head_nll(model, hidden, ids), sequence_nll(logits, ids))
