"""Plan report (PNG + self-contained HTML) and ``prunec plan diff``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import SMOLLM2_135M
from prunec.compiler.plan import Decision, LayerPlan, Plan
from prunec.passes.methods.types import MethodResult, SearchStats, StepScore
from prunec.runtime.commands.plan import diff_rows, load_plan, register
from prunec.runtime.plan_report import layer_fractions, write_plan_report

SHAPE = SMOLLM2_135M


def _plan() -> Plan:
    plan = Plan.dense(SHAPE, "multipruner")
    plan = plan.with_layer(LayerPlan(3, attn_removed=True))
    plan = plan.with_layer(LayerPlan(5, kept_channels=tuple(range(1152))))
    plan = plan.with_layer(LayerPlan(7, mlp_removed=True, kept_heads=tuple(range(6))))
    for n, (stage, layer) in enumerate([("blocks", 3), ("blocks", 7), ("mlp", 5)]):
        plan = plan.with_decision(Decision(n, stage, layer, "x", 20.0 + n, 12))
    return plan


def _result() -> MethodResult:
    traj = tuple(StepScore(n, s, 20.0 + n, 1000 - n) for n, s in
                 enumerate(["blocks", "blocks", "mlp"]))
    return MethodResult(_plan(), SearchStats(10.0, 30, 1.5, 19.0, traj, "fast"))


def test_layer_fractions() -> None:
    fr = layer_fractions(_plan(), SHAPE)
    assert fr[3] == (1.0, 0.0) and fr[5] == (0.75, 1.0) and fr[7] == (0.0, 6 / 9)


def test_report_writes_png_and_self_contained_html(tmp_path: Path) -> None:
    png, page = write_plan_report(_result(), SHAPE, tmp_path / "r")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "data:image/png;base64," in text and "http" not in text.replace("https://", "")
    assert "1152/1536" in text and "removed" in text and "6/9 heads" in text


def test_diff_rows_mark_differences(tmp_path: Path) -> None:
    a, b = _plan(), Plan.dense(SHAPE)
    rows = diff_rows(a, b)
    assert [r[0] for r in rows if not r[-1]] == [3, 5, 7]
    assert rows[3][1:5] == ("removed", "all", "all", "all")


def test_load_plan_from_lock_dir_and_plan_file(tmp_path: Path) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "plan.lock.json").write_text(json.dumps({"plan": _plan().to_json()}))
    (tmp_path / "plan.json").write_text(_plan().dumps())
    assert load_plan(tmp_path / "art") == load_plan(tmp_path / "plan.json") == _plan()
    with pytest.raises(CompileError) as err:
        load_plan(tmp_path / "missing")
    assert err.value.diagnostics[0].code == "P0704"


def test_plan_diff_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.json").write_text(_plan().dumps())
    (tmp_path / "b.json").write_text(Plan.dense(SHAPE).dumps())
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["plan", "diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    assert "3 of 30 layers differ" in out
    same = parser.parse_args(["plan", "diff", str(tmp_path / "a.json"), str(tmp_path / "a.json")])
    assert same.handler(same) == 0


def test_plan_commands_module_does_not_import_torch() -> None:
    import subprocess

    code = ("import sys, prunec.runtime.commands.plan; "
            "assert 'torch' not in sys.modules and 'rich' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rich_progress_accepts_events() -> None:
    from prunec.passes.methods.types import ProgressEvent
    from prunec.runtime.plan_report import rich_progress

    with rich_progress() as update:
        for n in range(1, 4):
            update(ProgressEvent("blocks step 1", n, 3, 20.0 + n))
        update(ProgressEvent("blocks stage", 5, 10))
