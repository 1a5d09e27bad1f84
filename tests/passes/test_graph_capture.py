"""Capture: the unlifted GraphModule computes the model's logits at any batch/seq size."""

from __future__ import annotations

import pytest
import torch
from graphkit import Captured

from prunec.passes.reference import reference_logits, relative_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("batch", "seq"), [(1, 2), (3, 7), (2, 40)])
def test_captured_graph_matches_model(captured: Captured, batch: int, seq: int) -> None:
    ids = torch.randint(0, captured.shape.vocab, (batch, seq), generator=torch.Generator().manual_seed(seq))
    with torch.no_grad():
        got = captured.graph()(ids)
    assert got.shape == (batch, seq, captured.shape.vocab)
    assert relative_error(got, reference_logits(captured.model, ids)) <= 1e-5


def test_capture_does_not_touch_the_model(captured: Captured) -> None:
    before = {k: v.clone() for k, v in captured.model.state_dict().items()}
    gm = captured.graph()
    from tinymodels import random_plan

    from prunec.passes.pipeline import run_pipeline

    run_pipeline(gm, random_plan(captured.shape, seed=3, p_remove=0.5), captured.shape)
    after = captured.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
