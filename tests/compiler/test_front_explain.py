"""explain: the rows and sentences of a would-be build, parameter counts from plan.py."""

from __future__ import annotations

import io

from frontkit import ROOT, SPECS
from rich.console import Console

from prunec.compiler import budget
from prunec.compiler.driver import load_spec
from prunec.compiler.explain import estimate_manual_plan, explain, print_explanation
from prunec.compiler.ir import SMOLLM2_135M
from prunec.compiler.plan import Plan, param_count


def _explain(name: str):  # type: ignore[no-untyped-def]
    spec, diags = load_spec(ROOT / "specs" / f"{name}.prune")
    assert spec is not None, diags
    return spec, explain(spec, SMOLLM2_135M, ROOT / "specs")


def test_manual_plan_parameters_are_exact() -> None:
    spec, exp = _explain("smollm2-manual")
    assert spec.plan is not None
    plan = estimate_manual_plan(spec.plan, SMOLLM2_135M)
    assert plan.validate(SMOLLM2_135M) == []
    after = param_count(SMOLLM2_135M, plan)
    row = next(r for r in exp.rows if r.section == "plan" and r.setting == "parameters")
    assert f"{after / 1e6:.1f}M" in row.value
    assert after < param_count(SMOLLM2_135M, Plan.dense(SMOLLM2_135M))
    assert plan.layers[16].kept_heads == (0, 1, 3, 4, 6, 7)  # 2 per KV group


def test_static_target_estimate_and_defaults() -> None:
    spec, exp = _explain("smollm2-composed")
    values = {(r.section, r.setting): r.value for r in exp.rows}
    assert values[("static", "parameters")] == "134.5M -> about 121.1M"
    assert spec.static is not None
    step = budget.mlp_step(spec.static, SMOLLM2_135M)
    assert step == 192 and values[("static", "steps")].startswith(f"{step} MLP channels")
    assert values[("probe", "ratio")] == "20% model-wide = 22% in each of 27 layers"
    assert "gating on" in values[("export", "onnx")]


def test_every_spec_explains_and_renders() -> None:
    for path in SPECS:
        spec, _ = load_spec(path)
        assert spec is not None
        buf = io.StringIO()
        print_explanation(explain(spec, SMOLLM2_135M, path.parent),
                          Console(file=buf, width=120))
        assert "parameters" in buf.getvalue() and "[cuda" not in buf.getvalue().replace(
            "[cuda, cpu]", "")
