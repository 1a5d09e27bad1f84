"""``reconstruct`` / ``damp`` in prune blocks and manual plans: lowering and diagnostics."""

from __future__ import annotations

import pytest
from frontkit import ROOT

from prunec.compiler.driver import check_source
from prunec.compiler.ir import DAMP_PRIOR_TOKENS, Reconstruct, Spec, damp_for

CALIB = 'model demo\ndataset c text "data/kjv-calib.txt" { samples = 4, seq_len = 64 }\n'


def _check(text: str) -> tuple[Spec | None, list[tuple[str, str]]]:
    spec, diags = check_source(CALIB + text, str(ROOT / "specs" / "t.prune"))
    return spec, [(d.code, d.message) for d in diags if d.is_error]


def test_settings_lower_with_the_method_default() -> None:
    spec, errors = _check("prune flap { target = 20%, score = c }\n")
    assert spec and spec.static and not errors
    assert spec.static.reconstruct is None and spec.static.reconstruction is Reconstruct.BIAS
    assert spec.static.damp is None  # auto
    assert spec.refit_damp() == "auto: 1"  # 4 x 64 tokens: fewer than DAMP_PRIOR_TOKENS
    spec, errors = _check("prune multipruner { target = 20%, score = c, "
                          "reconstruct = least-squares, damp = 5% }\n")
    assert spec and spec.static and not errors
    assert spec.static.reconstruction is Reconstruct.LEAST_SQUARES and spec.static.damp == 0.05


def test_damp_auto_is_a_prior_worth_a_fixed_number_of_tokens() -> None:
    """auto: DAMP_PRIOR_TOKENS / tokens, capped at 1; a written damp is used as written."""
    assert damp_for(None, 4 * DAMP_PRIOR_TOKENS) == pytest.approx(0.25)
    assert damp_for(None, DAMP_PRIOR_TOKENS // 2) == 1.0 and damp_for(None, 0) == 1.0
    assert damp_for(None, 4096) < damp_for(None, 1024)
    assert damp_for(0.0, 10) == 0.0 and damp_for(0.3, 10**6) == 0.3
    spec, errors = _check("prune wanda-sp { target = 20%, score = c, "
                          "reconstruct = least-squares, damp = auto }\n")
    assert spec and spec.static and not errors and spec.static.damp is None
    spec, errors = _check("prune wanda-sp { target = 20%, score = c, "
                          "reconstruct = least-squares, damp = 0.2 }\n")
    assert spec and spec.refit_damp() == "0.2"


def test_manual_plan_takes_score_reconstruct_and_damp() -> None:
    spec, errors = _check("plan {\n  score = c\n  reconstruct = bias\n"
                          "  keep 768 channels in layers[3]\n}\n")
    assert spec and spec.plan and not errors
    assert spec.plan.reconstruct is Reconstruct.BIAS and spec.score_dataset() == "c"
    assert len(spec.plan.actions) == 1


@pytest.mark.parametrize("text,code,words", [
    ("prune blockpruner { target = 20%, score = c, reconstruct = bias }", "P0211",
     "applies to multipruner, magnitude, wanda-sp and flap, not blockpruner"),
    ("prune flap { target = 20%, score = c, damp = 2 }", "P0202", "'damp' must be between"),
    ("prune wanda-sp { target = 20%, score = c, reconstruct = exact }", "P0104", "exact"),
    ("prune magnitude { target = 20%, reconstruct = bias }", "P0212",
     "reconstruct = bias needs a calibration dataset"),
    ("plan {\n  reconstruct = least-squares\n  keep 768 channels in layers[3]\n}", "P0212",
     "needs a calibration dataset"),
    ("plan {\n  score = c\n  reconstruct = bias\n  remove layers[3].mlp\n}", "P0211",
     "only removes blocks"),
    ("prune wanda-sp { target = 20%, score = c, reconstruct = least-squares, damp = 0 }",
     "P0228", "needs more than 1536 calibration tokens; c has 256"),
])
def test_bad_reconstruct_settings_are_diagnostics(text: str, code: str, words: str) -> None:
    _, errors = _check(text + "\n")
    assert any(c == code and words in m for c, m in errors), errors


def test_damp_zero_with_enough_tokens_and_positive_damp_are_fine() -> None:
    big = CALIB.replace("samples = 4", "samples = 32")
    for text in (big + "prune flap { target = 20%, score = c, reconstruct = least-squares, "
                 "damp = 0 }\n",
                 CALIB + "prune flap { target = 20%, score = c, reconstruct = least-squares "
                 "}\n"):
        _, diags = check_source(text, str(ROOT / "specs" / "t.prune"))
        assert not [d for d in diags if d.is_error], diags
