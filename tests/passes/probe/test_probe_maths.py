"""Unit tests of Probe Pruning's formulas (prunec.passes.probe.maths), hypothesis for counts."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunec.compiler import budget
from prunec.passes.probe import maths


@given(st.integers(1, 5000), st.fractions(Fraction(1, 1000), Fraction(1)), st.integers(1, 3))
def test_ceil_count_is_clipped_exact_ceiling(n: int, frac: Fraction, minimum: int) -> None:
    assert budget.ceil_count(n, frac, minimum) == min(n, max(minimum, math.ceil(frac * n)))


def test_probe_positions_are_top_norms_ascending() -> None:
    h = torch.zeros(3, 8, 4)
    for t, scale in enumerate([1, 9, 2, 8, 3, 7, 0.5, 6]):
        h[:, t] = scale
    pos = maths.probe_positions(h, Fraction(1, 2))
    assert pos.tolist() == [1, 3, 5, 7]
    assert maths.probe_positions(h[:, :3], Fraction(1, 10)).tolist() == [1, 2]  # at least 2


def test_probe_samples_rank_by_norm_at_the_positions() -> None:
    h = torch.ones(40, 2, 3)
    h[17] *= 5
    h[3] *= 4
    assert maths.probe_samples(h, Fraction(1, 20)).tolist() == [17, 3]  # ceil(0.05*40) = 2
    assert maths.probe_samples(h[:4], Fraction(1, 20)).tolist() == [3]  # at least 1


def test_fusion_weights_the_larger_source() -> None:
    p = torch.tensor([[0.0, 2.0, 1e3]]).t()  # [C, t]: 3 channels, one position
    h = torch.tensor([[3.0, 0.0, 1.0]]).t()
    s = maths.fuse(p, h)
    w = p / (p + h + maths.FUSION_EPS)
    assert torch.allclose(s, ((1 - w) * h + w * p).sum(1))
    assert s[0] == pytest.approx(3.0) and s[1] == pytest.approx(2.0, rel=1e-5)
    assert s[2] == pytest.approx(1e3, rel=1e-2)
    assert torch.allclose(maths.fuse(torch.ones(2, 5), torch.ones(2, 5)), torch.full((2,), 5.0))


def test_ppsp_importance_is_an_l2_norm_over_rows_and_head_columns() -> None:
    torch.manual_seed(0)
    w = torch.randn(7, 12)  # [out, in]: 3 heads of head_dim 4
    s = torch.rand(12)
    mlp = maths.mlp_importance(s, maths.column_pow4(w))
    assert torch.allclose(mlp, (s * w.pow(2)).norm(dim=0))
    heads = maths.head_importance(s, maths.column_pow4(w), 4)
    want = torch.stack([(s[h * 4:(h + 1) * 4] * w[:, h * 4:(h + 1) * 4].pow(2)).norm()
                        for h in range(3)])
    assert torch.allclose(heads, want)


def test_ema_update() -> None:
    old, new = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    assert torch.allclose(maths.ema_update(old, new, 0.99), torch.tensor([1.02, 1.98]))


@given(st.integers(1, 8192), st.floats(0.0, 1.0), st.sampled_from([1, 8, 32, 64, 128]))
def test_kept_channels_rounding(width: int, ratio: float, round_to: int) -> None:
    kept = budget.kept_channels(width, ratio, round_to)
    assert min(round_to, width) <= kept <= width
    assert kept % round_to == 0 or kept == width
    if round_to <= width and kept != width and kept != round_to:
        assert abs(kept - (1 - ratio) * width) <= round_to / 2 + 1e-9


@given(st.integers(1, 4096), st.floats(0.0, 1.0), st.floats(0.0, 1.0),
       st.sampled_from([1, 8, 64]))
def test_kept_channels_monotone_in_ratio(width: int, r1: float, r2: float, round_to: int) -> None:
    lo, hi = sorted((r1, r2))
    assert budget.kept_channels(width, lo, round_to) >= budget.kept_channels(width, hi, round_to)


def test_kept_counts_on_smollm2_widths() -> None:
    assert budget.kept_channels(1536, 0.22, 64) == 1216
    assert budget.kept_channels(1536, 0.44, 64) == 832
    assert budget.kept_heads(9, 0.22) == 8 and budget.kept_heads(9, 0.44) == 6
    assert budget.kept_heads(4, 1.0) == 1
    with pytest.raises(ValueError):
        budget.kept_channels(10, 0.5, 0)


@given(st.integers(2, 100), st.floats(0.0, 0.9))
def test_layer_ratio_keeps_the_model_wide_ratio(n_layers: int, ratio: float) -> None:
    skipped = n_layers // 4
    r = budget.layer_ratio(ratio, n_layers, skipped)
    exact = n_layers / (n_layers - skipped) * ratio
    assert r == pytest.approx(min(1.0, exact), abs=0.005 + 1e-12)


def test_layer_ratio_paper_values() -> None:
    assert budget.layer_ratio(0.2, 30, 3) == 0.22
    assert budget.layer_ratio(0.4, 30, 3) == 0.44
    assert budget.layer_ratio(0.4, 32, 3) == 0.44
    assert budget.layer_ratio(0.5, 4, 4) == 0.0
