"""runtime.build: the artifact layout, report.json, gates, output directories, methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import ParamsGate, PerplexityGate
from prunec.compiler.outputs import failed_report_path, output_dir
from prunec.compiler.plan import Plan, param_count
from prunec.runtime.build import BuildOptions, build

REPORT_KEYS = {"schema", "passed", "spec", "model", "method", "plan_summary", "params",
               "flops_per_token", "layers", "perplexity", "gates", "providers", "timings_s",
               "memory", "compile", "method_info", "genai", "versions", "notes"}


def test_artifact_layout(built: Any) -> None:
    out = built.artifact
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "plan.json", "report.json", "tokenizer.json",
            "tokenizer_config.json", "plan-report.png", "plan-report.html"} <= names
    assert (out / "plan-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<h2>Layers</h2>" in (out / "plan-report.html").read_text()
    assert [p.name for p in out.parent.iterdir()] == [out.name], "no temp dirs left behind"
    assert json.loads((out / "report.json").read_text()) == built.report


def test_report_contents(built: Any) -> None:
    r = built.report
    assert set(r) == REPORT_KEYS and r["passed"] and r["method"] == "manual"
    plan = Plan.from_json(json.loads((built.artifact / "plan.json").read_text()))
    assert plan == Plan.from_json(Plan.from_json(plan.to_json()).to_json())
    assert r["params"]["agree"], "ONNX weight matrices == the plan's count"
    assert r["params"]["pruned"] < r["params"]["dense"]
    assert r["flops_per_token"]["pruned"] < r["flops_per_token"]["dense"]
    assert [row["attn"] for row in r["layers"]] == ["kept", "removed", "kept", "kept"]
    assert [row["channels_kept"] for row in r["layers"]] == [64, 64, 128, 0]
    assert [row["heads_kept"] for row in r["layers"]] == [6, 0, 4, 3]
    assert [g["held"] for g in r["gates"]] == [True, True]
    assert r["providers"]["used"] == ["CPUExecutionProvider"]
    assert {"load_model", "plan", "compile", "evaluate_dense", "evaluate_pruned",
            "total"} <= set(r["timings_s"])
    assert {"torch", "onnxruntime", "prunec"} <= set(r["versions"])


def fast_build(tiny_dir: Path, built: Any, out: Path, gates: tuple[Any, ...] = ()) -> Any:
    spec = buildkit.make_spec(tiny_dir, plan=buildkit.manual_plan(), gates=gates)
    return build(spec, Path.cwd(), BuildOptions(out, quiet=True),
                 {"static": buildkit.copy_compile(built.artifact / "model.onnx")})


def test_failed_gate_publishes_nothing_and_keeps_old(tiny_dir: Path, built: Any,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "art"
    first = fast_build(tiny_dir, built, out)
    assert first.passed and (out / "report.json").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    ppl = PerplexityGate("eval", None, 1.5, buildkit.span(40))
    params = ParamsGate(1000, buildkit.span(41))
    failed = fast_build(tiny_dir, built, out, gates=(ppl, params))
    assert not failed.passed and failed.artifact is None
    assert [g["held"] for g in failed.report["gates"]] == [False, False]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "old artifact intact"
    assert failed.failed_report == failed_report_path(out)
    saved = json.loads(failed.failed_report.read_text())
    assert saved["passed"] is False and Plan.from_json(saved["plan"]).method == "manual"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "art.failed-report.json"]
    again = fast_build(tiny_dir, built, out)
    assert again.passed and not failed_report_path(out).exists()


def test_gate_with_relative_and_absolute_limits(tiny_dir: Path, built: Any,
                                                tmp_path: Path) -> None:
    dense = built.report["perplexity"]["eval"]["dense"]["ppl"]
    gate = PerplexityGate("eval", 100.0, dense * 0.5, buildkit.span(40))
    r = fast_build(tiny_dir, built, tmp_path / "a", gates=(gate,)).report
    assert r["gates"][0]["limit"] == pytest.approx(dense * 0.5) and not r["passed"]


def test_params_gate_uses_the_plans_count(tiny_dir: Path, built: Any, tmp_path: Path) -> None:
    pruned = built.report["params"]["pruned"]
    assert pruned == param_count(
        buildkit.load_shape(tiny_dir), Plan.from_json(json.loads(
            (built.artifact / "plan.json").read_text())))
    ok = fast_build(tiny_dir, built, tmp_path / "a", gates=(ParamsGate(pruned, buildkit.SPAN),))
    assert ok.passed


def test_refuses_to_replace_a_foreign_directory(tiny_dir: Path, built: Any,
                                                tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CompileError) as exc:
        fast_build(tiny_dir, built, tmp_path / "mine")
    assert exc.value.diagnostics[0].code == "P0406"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_output_dir_rules(tiny_dir: Path) -> None:
    spec = buildkit.make_spec(tiny_dir)
    assert output_dir(spec, Path("/specs"), Path("x")) == Path("x")
    assert output_dir(spec, Path("/specs"), None) == Path("build/tiny")
    with_output = buildkit.make_spec(tiny_dir, output="out/t")
    assert output_dir(with_output, Path("/specs"), None) == Path("/specs/out/t")


def test_bad_manual_plan_is_a_diagnostic_before_any_work(tiny_dir: Path, tmp_path: Path) -> None:
    from prunec.compiler.ir import KeepHeads, LayerSelector, ManualPlan, SelectorKind

    sel = LayerSelector(SelectorKind.INDEX, 0, None, buildkit.SPAN)
    plan = ManualPlan((KeepHeads(sel, 5, None, buildkit.span(12)),), buildkit.SPAN)
    spec = buildkit.make_spec(tiny_dir, plan=plan)
    with pytest.raises(CompileError) as exc:
        build(spec, Path.cwd(), BuildOptions(tmp_path / "o", quiet=True),
              {"static": buildkit.reference_compile})
    assert exc.value.diagnostics[0].span.line == 12
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


def test_static_method_plan(tiny_dir: Path, tiny_tok: Any) -> None:
    """The spec's method runs through prunec.passes.methods (magnitude: no calibration)."""
    from prunec.compiler.ir import Scope, StaticMethod, StaticPrune, Target
    from prunec.runtime.data import load_spec_data
    from prunec.runtime.evaluate import make_progress
    from prunec.runtime.models import load_model
    from prunec.runtime.planning import PlanOptions, make_plan

    static = StaticPrune(StaticMethod.MAGNITUDE, Target(0.2, None, None, None, buildkit.SPAN),
                         None, None, None, (), False, Scope.PER_LAYER, buildkit.span(7))
    spec = buildkit.make_spec(tiny_dir)
    spec = type(spec)(**{**spec.__dict__, "static": static})
    loaded = load_model(spec.model, Path.cwd())
    with make_progress(True) as progress:
        data = load_spec_data(spec, Path.cwd(), tiny_tok)
        plan, result = make_plan(spec, loaded, data, PlanOptions(progress))
    assert plan.method == "magnitude" and result is not None
    assert plan.validate(loaded.shape) == []
    dense = param_count(loaded.shape, Plan.dense(loaded.shape))
    assert param_count(loaded.shape, plan) < dense


def test_locked_rebuild_is_byte_identical_and_refuses_a_changed_spec(
        tiny_dir: Path, tmp_path: Path) -> None:
    """A MultiPruner build writes plan.lock.json; ``--lock`` rebuilds without searching and
    writes the same model.onnx, byte for byte; a lock from another target is refused."""
    import dataclasses

    from prunec.compiler.ir import Distribution, Scope, StaticMethod, StaticPrune, Steps, Target

    def spec_with(target: float) -> Any:
        static = StaticPrune(StaticMethod.MULTIPRUNER,
                             Target(target, None, None, None, buildkit.span(8)),
                             Distribution(0.3, 0.7, 0.0, buildkit.span(9)),
                             Steps(32, None, buildkit.span(10)), "calib", (), True,
                             Scope.PER_LAYER, buildkit.span(7))
        data = (buildkit.dataset("calib", buildkit.KJV_CALIB, samples=2, seq_len=16),
                buildkit.dataset("eval", buildkit.KJV_EVAL, cut=(0.0, 0.5)))
        spec = buildkit.make_spec(tiny_dir, datasets=data)
        return dataclasses.replace(spec, static=static)

    searched = build(spec_with(0.2), Path.cwd(), BuildOptions(tmp_path / "a", quiet=True))
    lock = tmp_path / "a" / "plan.lock.json"
    assert lock.is_file() and json.loads(lock.read_text())["plan"]["decisions"]
    locked = build(spec_with(0.2), Path.cwd(),
                   BuildOptions(tmp_path / "b", quiet=True, lock=lock))
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["method_info"]["from_lock"] is True
    assert searched.passed and locked.passed
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    with pytest.raises(CompileError) as exc:
        build(spec_with(0.3), Path.cwd(), BuildOptions(tmp_path / "c", quiet=True, lock=lock))
    assert exc.value.diagnostics[0].code == "P0701"
    assert not (tmp_path / "c").exists()
