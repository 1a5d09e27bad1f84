"""Block schemas: one table per block, read by lowering and explain, documented in
docs/language.md; key applicability (P0211) in one place; the implicit ONNX export."""

from __future__ import annotations

import re

import pytest
from frontkit import ROOT

from prunec.compiler import blocks
from prunec.compiler.checks import history_dataset
from prunec.compiler.driver import check_source
from prunec.compiler.explain import explain
from prunec.compiler.ir import SMOLLM2_135M, Provider, Spec

DOC = (ROOT / "docs" / "language.md").read_text()
CALIB = 'model demo\ndataset c text "data/kjv-calib.txt"\n'


def _lower(text: str) -> tuple[Spec | None, list[tuple[str, str, str | None]]]:
    spec, diags = check_source(text, str(ROOT / "specs" / "t.prune"))
    return spec, [(d.code, d.message, d.hint) for d in diags if d.is_error]


def test_docs_show_every_key_and_spell_every_default() -> None:
    reference = re.findall(r"```prune\n(.*?)```", DOC, re.DOTALL)[0]
    defaults = " ".join(DOC.split("## Defaults")[1].split("##")[0].replace("`", "").split())
    for schema in blocks.SCHEMAS:
        for key in schema.keys:
            assert re.search(rf"\b{key.name} [={{]", reference), (schema.block, key.name)
            if key.shown is not None:
                assert f"{key.name} {key.shown}" in defaults, (schema.block, key.name)


def test_reference_spec_lowers_to_the_schema_defaults() -> None:
    spec, errors = _lower(CALIB + "prune multipruner { target = 20%, score = c }\n"
                          "probe { ratio = 20% }\n")
    assert spec is not None and spec.static and spec.probe, errors
    assert spec.static.reorder is blocks.REORDER.default
    assert spec.static.scope is blocks.SCOPE.default
    assert (spec.probe.round_to, spec.probe.momentum) == (blocks.ROUND.default,
                                                          blocks.MOMENTUM.default)
    onnx = spec.onnx_export()
    assert onnx is not None and onnx.max_len == blocks.MAX_LEN.default == 512


def test_unknown_key_hint_names_each_key_once() -> None:
    _, errors = _lower(CALIB + "prune multipruner { target = 20%, score = c, xyzzy = 1 }\n")
    hint = next(h for code, _, h in errors if code == "P0101")
    assert hint is not None and hint.startswith("expected one of: ")
    listed = hint.removeprefix("expected one of: ").split(", ")
    assert sorted(listed) == sorted(set(listed)) and "target" in listed and "steps" in listed


@pytest.mark.parametrize("text,message", [
    (CALIB + "prune magnitude { target = 20%, score = c, distribution = 1:1:1 }",
     "'distribution' applies to multipruner, not magnitude"),
    (CALIB + "prune flap { target = 20%, score = c, steps { mlp = 64 } }",
     "'steps' applies to multipruner, not flap"),
    (CALIB + "prune magnitude { target { blocks = 10% } }",
     "'blocks' applies to blockpruner, not magnitude"),
    (CALIB + "prune multipruner { target { mlp = 10% }, score = c }",
     "'mlp' applies to magnitude, wanda-sp and flap, not multipruner"),
    ('model demo { revision = "main" }', "'revision' applies to hub models, not demo"),
    ('model demo\ndataset c text "data/kjv-calib.txt" { field = "t" }\nevaluate = [c]',
     "'field' applies to jsonl and hf-disk datasets, not text"),
])
def test_inapplicable_keys_are_p0211(text: str, message: str) -> None:
    spec, errors = _lower(text + "\n")
    assert spec is None and ("P0211", message) in [(c, m) for c, m, _ in errors], errors


def test_a_spec_without_export_gets_the_implicit_one() -> None:
    static, _ = _lower(CALIB + "prune magnitude { target = 20% }\n")
    probe, errors = _lower(CALIB + "probe { ratio = 20%, history = c }\n")
    assert static is not None and probe is not None, errors
    for spec, gated in ((static, False), (probe, True)):
        onnx = spec.onnx_export()
        assert onnx is not None and onnx.file == "model.onnx" and onnx.opset == 18
        assert (onnx.gating, onnx.fuse, onnx.providers) == (gated, not gated, (Provider.CPU,))
        rows = {(r.section, r.setting): r.value
                for r in explain(spec, SMOLLM2_135M, ROOT / "specs").rows}
        assert rows[("export", "onnx")].startswith(
            "model.onnx, opset 18, gating " + ("on (max_len 512)" if gated else "off"))


def test_history_dataset_is_history_else_the_score_dataset() -> None:
    text = (CALIB + 'dataset h text "data/kjv-eval.txt"\n'
            "prune magnitude { target = 20%, score = c }\n")
    with_history, e1 = _lower(text + "probe { ratio = 20%, history = h }\n")
    from_score, e2 = _lower(text + "probe { ratio = 20% }\n")
    static_only, e3 = _lower(text + "evaluate = [h]\n")
    assert with_history and from_score and static_only, (e1, e2, e3)
    assert [history_dataset(s) for s in (with_history, from_score, static_only)] == [
        "h", "c", None]
    _, errors = _lower(CALIB + "probe { ratio = 20% }\nevaluate = [c]\n")
    assert [c for c, _, _ in errors] == ["P0212"]
