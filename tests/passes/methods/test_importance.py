"""passes.methods.importance.magnitude_importance: the scores a manual ``keep N`` ranks by."""

from __future__ import annotations

import pytest
from tinymodels import tiny_llama

from prunec.passes.methods.importance import magnitude_importance
from prunec.passes.reference import decoder_layers, shape_of


def test_channel_scores_are_gate_plus_up_row_l1() -> None:
    model = tiny_llama(seed=2)
    mlp = decoder_layers(model)[1].mlp
    want = mlp.gate_proj.weight.detach().abs().sum(1) + mlp.up_proj.weight.detach().abs().sum(1)
    got = magnitude_importance(model, shape_of(model))("channels", 1)
    assert got == pytest.approx(want.double().tolist(), rel=1e-6)


def test_head_scores_add_their_kv_group_and_rank_by_q_within_it() -> None:
    model = tiny_llama(seed=2)
    shape = shape_of(model)
    attn, d, g = decoder_layers(model)[2].self_attn, shape.head_dim, shape.group_size
    wq, wk, wv = (p.weight.detach() for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    got = magnitude_importance(model, shape)("heads", 2)
    for h in range(shape.n_heads):
        q, kv = slice(h * d, (h + 1) * d), slice(h // g * d, (h // g + 1) * d)
        want = (wq[q].abs().sum() + wk[kv].abs().sum() + wv[kv].abs().sum()) / d
        assert got[h] == pytest.approx(float(want), rel=1e-6)
    q_l1 = wq.abs().view(shape.n_heads, -1).sum(1)
    within = [sorted(range(k * g, (k + 1) * g), key=lambda h: -got[h])
              for k in range(shape.n_kv_heads)]
    assert within == [sorted(range(k * g, (k + 1) * g), key=lambda h: -float(q_l1[h]))
                      for k in range(shape.n_kv_heads)]
