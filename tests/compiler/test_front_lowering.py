"""Lowering and checks of valid specs: IR goldens, defaults, spans on every node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from frontkit import HUB_CACHE, SPECS, VALID, dump_ir
from hypothesis import given, settings
from hypothesis import strategies as st

from prunec.compiler.diagnostics import Span
from prunec.compiler.driver import check_source, load_spec
from prunec.compiler.ir import (
    DType,
    ModelSource,
    OnnxExport,
    ProbeMetric,
    ProbeMode,
    ProbeTarget,
    Provider,
    Scope,
    SelectorKind,
    Spec,
)


@pytest.fixture(autouse=True)
def _hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(HUB_CACHE))


@pytest.mark.parametrize("path", SPECS + VALID, ids=lambda p: p.stem)
def test_checks_clean_and_ir_golden(path: Path, golden) -> None:  # type: ignore[no-untyped-def]
    spec, diags = load_spec(path)
    assert spec is not None, [d.headline() for d in diags]
    assert not any(d.is_error for d in diags)
    golden(f"ir/{path.parent.name}-{path.stem}.txt", dump_ir(spec))


@pytest.mark.parametrize("path", SPECS + VALID, ids=lambda p: p.stem)
def test_every_node_has_a_span_in_the_spec(path: Path) -> None:
    spec, _ = load_spec(path)
    assert spec is not None
    for span in _spans(spec):
        assert span.file == str(path) and span.line >= 1 and span.col >= 1


def _spans(node: object) -> list[Span]:
    if isinstance(node, Span):
        return [node]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [s for f in dataclasses.fields(node) for s in _spans(getattr(node, f.name))]
    if isinstance(node, tuple):
        return [s for v in node for s in _spans(v)]
    return []


def _check(text: str) -> Spec:
    spec, diags = check_source(text, str(SPECS[0].parent / "t.prune"))
    assert spec is not None, [d.headline() for d in diags]
    return spec


def test_defaults_follow_the_algorithms() -> None:
    spec = _check('model demo\ndataset c text "data/kjv-calib.txt"\n'
                  "prune multipruner { target = 20%  score = c }\nprobe { ratio = 40% }\n"
                  'export onnx\nexport hf\n')
    assert spec.model.source is ModelSource.DEMO and spec.model.dtype is DType.FLOAT32
    d = spec.datasets[0]
    assert (d.samples, d.seq_len, d.seed, d.slice, d.field) == (64, 256, 0, None, None)
    s = spec.static
    assert s is not None and s.distribution is None and s.steps is None
    assert s.reorder and s.scope is Scope.PER_LAYER and s.protect == ()
    p = spec.probe
    assert p is not None and p.targets == (ProbeTarget.MLP, ProbeTarget.HEADS)
    assert [(x.kind, x.start, x.stop) for x in p.skip] == [(SelectorKind.RANGE, 0, 2)]
    assert (p.mode, p.token_fraction, p.sample_fraction, p.momentum, p.metric, p.round_to) == (
        ProbeMode.PROBE, 0.5, 0.05, 0.99, ProbeMetric.PPSP, 64)
    assert p.history_dataset is None
    onnx = spec.onnx_export()
    assert onnx == OnnxExport("model.onnx", 18, True, (Provider.CUDA, Provider.CPU), onnx.span)
    assert spec.exports[1].directory == "hf"  # type: ignore[union-attr]
    assert spec.name == "t" and spec.output is None


def test_distribution_is_normalised() -> None:
    spec = _check('model demo\ndataset c text "data/kjv-calib.txt"\n'
                  "prune multipruner { target = 20% score = c distribution = 3:7:0 }\n")
    assert spec.static is not None and spec.static.distribution is not None
    dist = spec.static.distribution
    assert (dist.blocks, dist.mlp, dist.heads) == pytest.approx((0.3, 0.7, 0.0))


def test_units_and_fractions() -> None:
    spec = _check('model demo\ndataset c text "data/kjv-calib.txt" { slice = 0.25 .. 75% }\n'
                  "evaluate = [c]\ngates { params <= 1.2B\n params <= 500K\n"
                  "perplexity(c) <= 30 }\n")
    assert [getattr(g, "max_params", None) for g in spec.gates[:2]] == [1_200_000_000, 500_000]
    sl = spec.datasets[0].slice
    assert sl is not None and (sl.start, sl.end) == (0.25, 0.75)


def test_gating_explicit_off_with_probe() -> None:
    spec = _check('model demo\ndataset c text "data/kjv-calib.txt"\n'
                  "probe { ratio = 40% history = c }\nexport onnx { gating = off }\n")
    onnx = spec.onnx_export()
    assert onnx is not None and not onnx.gating


def test_several_errors_in_one_run() -> None:
    _, diags = check_source("model demo\nprobe { ratio = 140%  mode = fast  round = x }\n"
                            "gates { params <= 3Q }\n", "x.prune")
    assert [d.code for d in diags] == ["P0202", "P0104", "P0103", "P0105"]


def test_examples_in_the_language_doc_check_clean() -> None:
    import re

    from frontkit import ROOT

    doc = (ROOT / "docs" / "language.md").read_text()
    blocks = re.findall(r"```prune\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) == 2
    calib = 'dataset calib text "data/kjv-calib.txt"\n'  # the plan example scores on it
    for text in (blocks[0], "model demo\n" + calib + blocks[1]):
        spec, diags = check_source(text, str(ROOT / "specs" / "doc.prune"))
        assert spec is not None, [d.headline() for d in diags]


def test_one_lowering_method_per_grammar_rule() -> None:
    from prunec.compiler.lower import Lower
    from prunec.grammar.parser import parser

    rules = {str(r.alias or r.origin.name) for r in parser().rules
             if not r.options.expand1}  # ?value is inlined: it never reaches the tree
    rules = {r for r in rules if not r.startswith("_")}
    assert rules and all(callable(getattr(Lower, r, None)) for r in rules), sorted(
        r for r in rules if not hasattr(Lower, r))


@pytest.mark.parametrize("text,code", [
    ('dataset c text "data/kjv-calib.txt" { samples = 1e999 }\nevaluate = [c]', "P0109"),
    ("gates { params <= 1e999M }", "P0202"),
    (('dataset c text "data/kjv-calib.txt"\nprune multipruner { target = 20% score = c '
      "distribution = 1e999:1:1 }"), "P0202"),
    ("plan { keep 99999999999999999999999 heads in layers[1] }", "P0207"),
    ("plan { remove layers[99999999999999999999].mlp }", "P0205"),
    ("gates { perplexity(a) <= 1e400x dense }", "P0202"),
])
def test_huge_numbers_are_diagnosed(text: str, code: str) -> None:
    spec, diags = check_source("model demo\n" + text + "\n", str(SPECS[0].parent / "t.prune"))
    assert spec is None and code in [d.code for d in diags]


@settings(max_examples=60, deadline=None)
@given(st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000)).filter(
    lambda t: sum(t) > 0))
def test_distribution_shares_sum_to_one(parts: tuple[int, int, int]) -> None:
    spec = _check('model demo\ndataset c text "data/kjv-calib.txt"\nprune multipruner { '
                  f"target = 20% score = c distribution = {parts[0]}:{parts[1]}:{parts[2]} }}\n")
    assert spec.static is not None and spec.static.distribution is not None
    d = spec.static.distribution
    assert d.blocks + d.mlp + d.heads == pytest.approx(1.0)
    assert d.blocks * sum(parts) == pytest.approx(parts[0])


@pytest.mark.parametrize(("body", "probe", "want"), [
    ("", False, (False, True)),  # static: fused by default
    ("", True, (True, False)),  # gated: not fused
    ("fuse = off", False, (False, False)),
    ("gating = off", True, (False, True)),  # a probe spec exported statically is fused
    ("gating = off fuse = off", True, (False, False)),
])
def test_fuse_defaults_follow_gating(body: str, probe: bool, want: tuple[bool, bool]) -> None:
    text = 'model demo\ndataset c text "data/kjv-calib.txt"\n'
    text += "probe {\n  ratio = 40%\n  history = c\n}\n" if probe else ""
    text += f'export onnx "m.onnx" {{ {body} }}\n'
    onnx = _check(text).onnx_export()
    assert onnx is not None and (onnx.gating, onnx.fuse) == want
