"""runtime.commands: the CLI (build, eval, plan show, generate) on a tiny model and a spec."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.runtime import backends
from prunec.runtime.cli import main

SPEC = """\
name = "tiny"
model hf "model"

dataset heldout text "eval.txt" {
  samples = 4
  seq_len = 32
  slice = 0% .. 50%
}

plan {
  remove layers[1].attn
  keep 64 channels in layers[0..1]
  keep 4 heads in layers[2]
  keep heads [0, 1, 2] in layers[3]
  remove layers[-1].mlp
}

evaluate = [heldout]

gates {
  perplexity(heldout) <= RATIOx dense
}

export onnx "model.onnx"
export hf "hf"
"""


@pytest.fixture()
def workspace(tiny_dir: Path, built: Any, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spec directory (tiny model, KJV text); compiling copies the session's real build."""
    shutil.copytree(tiny_dir, tmp_path / "model")
    shutil.copy(buildkit.KJV_EVAL, tmp_path / "eval.txt")
    (tmp_path / "tiny.prune").write_text(SPEC.replace("RATIO", "10"))
    (tmp_path / "strict.prune").write_text(SPEC.replace("RATIO", "0.5"))
    monkeypatch.setitem(backends.BACKENDS, "static",
                        buildkit.copy_compile(built.artifact / "model.onnx"))
    return tmp_path


def test_command_modules_do_not_import_torch() -> None:
    code = ("import sys, prunec.runtime.cli; "
            "assert len(prunec.runtime.cli.COMMANDS) == 8; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_command_is_registered_from_the_one_tuple() -> None:
    from prunec.runtime.cli import COMMANDS, build_parser

    names = [m.__name__.rsplit(".", 1)[1] for m in COMMANDS]
    assert names == ["check", "fmt", "explain", "build", "eval", "plan", "run", "generate"]
    help_text = build_parser().format_help()
    assert all(n in help_text for n in names)


def test_build_eval_plan_generate(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace / "art"
    assert main(["build", str(workspace / "tiny.prune"), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "per layer" in printed.out and "prunec: wrote" in printed.err
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["spec"]["name"] == "tiny"
    assert (out / "hf" / "prunec-pruned.json").is_file()

    assert main(["eval", str(workspace / "tiny.prune"), "--artifact", str(out), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)["perplexity"]["heldout"]
    assert ev["dense"]["ppl"] == pytest.approx(report["perplexity"]["heldout"]["dense"]["ppl"])
    assert ev["pruned"]["ppl"] == pytest.approx(report["perplexity"]["heldout"]["pruned"]["ppl"])

    args = ["eval", str(out), "--data", str(workspace / "eval.txt"), "--samples", "4",
            "--seq-len", "32", "--slice", "0:0.5", "--json"]
    assert main(args) == 0
    alone = json.loads(capsys.readouterr().out)["perplexity"]["data"]
    assert alone["dense"] is None
    assert alone["pruned"]["ppl"] == pytest.approx(ev["pruned"]["ppl"], rel=1e-6)

    assert main(["plan", "show", str(workspace / "tiny.prune"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads((out / "plan.json").read_text())

    assert main(["generate", str(out), "In the beginning", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("In the beginning")


def test_failed_gate_exit_1_and_no_artifact(workspace: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace / "strict-art"
    assert main(["build", str(workspace / "strict.prune"), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "gate failed" in err and "strict.prune:21" in err
    assert not out.exists() and (workspace / "strict-art.failed-report.json").is_file()


def test_spec_errors_exit_1(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = SPEC.replace("RATIO", "10").replace('model hf "model"', 'model hf "nope"')
    (workspace / "bad.prune").write_text(bad)
    assert main(["build", str(workspace / "bad.prune"), "-o", str(workspace / "o")]) == 1
    assert "nope" in capsys.readouterr().err
    assert not (workspace / "o").exists()


def test_eval_artifact_needs_data(workspace: Path, built: Any,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(built.artifact)]) == 1
    assert "--data" in capsys.readouterr().err


STATIC = """\
name = "tiny-static"
output = "art"
model hf "model"

dataset heldout text "eval.txt" {
  samples = 4
  seq_len = 32
  slice = 0% .. 50%
}

prune magnitude {
  target = 10%
}

evaluate = [heldout]
"""


def test_plan_show_touches_no_build_state(workspace: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`plan show` on a static spec resolves the plan and leaves the search state beside
    the output directory (and everything else there) as it was."""
    from prunec.compiler.outputs import output_dir, resume_path

    spec_path = workspace / "static.prune"
    spec_path.write_text(STATIC)
    state = resume_path(workspace / "art")
    state.write_text('{"precious": true}')
    before = sorted(p.name for p in workspace.iterdir())
    assert main(["plan", "show", str(spec_path), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "magnitude"
    assert state.read_text() == '{"precious": true}'
    assert sorted(p.name for p in workspace.iterdir()) == before
    from prunec.compiler.driver import load_spec

    spec, _ = load_spec(spec_path)
    assert spec is not None and resume_path(output_dir(spec, workspace)) == state
