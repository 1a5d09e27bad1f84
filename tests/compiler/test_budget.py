"""One rule for steps and counts: ``explain`` shows the step the search takes, for every spec
in specs/ and for models with other MLP widths (the rules live in ``compiler/budget.py``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from frontkit import ROOT, SPECS

from prunec.compiler import budget
from prunec.compiler.driver import check_source, load_spec
from prunec.compiler.explain import explain
from prunec.compiler.ir import SMOLLM2_135M, ModelShape, Spec, StaticMethod, StaticPrune
from prunec.compiler.plan import Plan
from prunec.passes.methods.search import Orders, candidates

WIDTHS = (256, 1280, 1536, 2304, 8192)


def _search_step(static: StaticPrune, shape: ModelShape) -> int:
    """The MLP step of the search's first candidate (what a build would cut)."""
    orders = Orders((tuple(range(shape.intermediate)),) * shape.n_layers,
                    (tuple(range(shape.n_kv_heads)),) * shape.n_layers)
    first = candidates("mlp", Plan.dense(shape), static, shape, orders)[0]
    assert first.layer.kept_channels is not None
    return shape.intermediate - len(first.layer.kept_channels)


def _explained_step(spec: Spec, shape: ModelShape) -> int:
    rows = {(r.section, r.setting): r.value for r in explain(spec, shape, ROOT / "specs").rows}
    return int(rows[("static", "steps")].split()[0])


def _multipruner_specs() -> list[Spec]:
    out = [s for s in (load_spec(p)[0] for p in SPECS)
           if s is not None and s.static and s.static.method is StaticMethod.MULTIPRUNER]
    text = ('model demo\ndataset c text "data/kjv-calib.txt"\n'
            "prune multipruner { target = 20%, score = c }\n")
    spec, diags = check_source(text, str(ROOT / "specs" / "t.prune"))
    assert spec is not None, [d.headline() for d in diags]
    return [*out, spec]


@pytest.mark.parametrize("width", WIDTHS)
def test_explain_shows_the_step_the_search_takes(width: int) -> None:
    shape = replace(SMOLLM2_135M, intermediate=width)
    specs = _multipruner_specs()
    assert len(specs) >= 3
    for spec in specs:
        assert spec.static is not None
        step = budget.mlp_step(spec.static, shape)
        assert _explained_step(spec, shape) == step
        if step < width:  # else P0216 for this model (an explicit step wider than the MLP)
            assert _search_step(spec.static, shape) == step


def test_the_default_step_rule() -> None:
    spec = _multipruner_specs()[-1]
    assert spec.static is not None
    got = [budget.mlp_step(spec.static, replace(SMOLLM2_135M, intermediate=w)) for w in WIDTHS]
    assert got == [32, 128, 192, 256, 1024]  # /8, to the nearest 64 (ties even) from 512


def test_probe_ratio_in_explain_is_the_layout_ratio() -> None:
    spec, _ = load_spec(ROOT / "specs" / "smollm2-probe.prune")
    assert spec is not None and spec.probe is not None
    rows = {(r.section, r.setting): r.value
            for r in explain(spec, SMOLLM2_135M, Path(spec.file).parent).rows}
    n = SMOLLM2_135M.n_layers
    skipped = len({i for s in spec.probe.skip for i in s.resolve(n)})
    per_layer = budget.layer_ratio(spec.probe.ratio, n, skipped)
    assert f"= {per_layer * 100:g}% in each of {n - skipped} layers" in rows[("probe", "ratio")]
