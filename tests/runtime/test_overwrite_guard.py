"""The overwrite guard through the CLI: ``prunec build -o DIR`` replaces DIR only when prunec
wrote it and nobody changed it since; anything else is P0406, exit 1, and DIR untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import buildkit
import pytest
from test_commands import SPEC

from prunec.runtime import backends
from prunec.runtime.artifact import MANIFEST, manifest_of
from prunec.runtime.cli import main


@pytest.fixture()
def spec(tiny_dir: Path, built: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spec on the tiny model; compiling copies the session's real build."""
    shutil.copytree(tiny_dir, tmp_path / "model")
    shutil.copy(buildkit.KJV_EVAL, tmp_path / "eval.txt")
    (tmp_path / "strict.prune").write_text(SPEC.replace("RATIO", "0.5"))
    monkeypatch.setitem(backends.BACKENDS, "static",
                        buildkit.copy_compile(built.artifact / "model.onnx"))
    path = tmp_path / "tiny.prune"
    path.write_text(SPEC.replace("RATIO", "10"))
    return path


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


def build(spec: Path, out: Path) -> int:
    return main(["build", str(spec), "-o", str(out), "-q"])


def refused(spec: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Build into ``out``, expect P0406 and exit 1 with ``out`` and its siblings untouched."""
    before, around = tree(out), sorted(p.name for p in out.parent.iterdir())
    assert build(spec, out) == 1
    err = capsys.readouterr().err
    assert "error[P0406]" in err and "internal error" not in err
    assert tree(out) == before and sorted(p.name for p in out.parent.iterdir()) == around
    return err


def test_the_victim_directory_survives(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = spec.parent / "victim"
    (victim / "src").mkdir(parents=True)
    (victim / "report.json").write_text('{"passed": true}')
    (victim / "precious.txt").write_text("years of work")
    (victim / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    err = refused(spec, victim, capsys)
    assert "older prunec" in err and "delete this one yourself" in err


def test_a_prunec_artifact_is_replaced(spec: Path) -> None:
    out = spec.parent / "art"
    assert build(spec, out) == 0
    first = json.loads((out / MANIFEST).read_text())
    assert first == manifest_of(out) and "model.onnx" in first["files"]
    assert "report.json" in first["files"] and "hf" in first["dirs"]
    (out / "report.json").write_text("{}")  # tampered with: refused until restored
    assert build(spec, out) == 1
    shutil.rmtree(out)
    assert build(spec, out) == 0 and build(spec, out) == 0
    assert json.loads((out / MANIFEST).read_text()) == manifest_of(out)


def test_one_extra_user_file_is_refused(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = spec.parent / "art"
    assert build(spec, out) == 0
    (out / "hf" / "notes.md").write_text("mine")
    err = refused(spec, out, capsys)
    assert "hf/notes.md, which prunec did not write" in err


def test_failed_reports_are_prunecs_own(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strict, out = spec.parent / "strict.prune", spec.parent / "art"
    failed = spec.parent / "art.failed-report.json"
    assert build(strict, out) == 1 and failed.is_file()
    assert build(spec, out) == 0 and not failed.exists(), "a success deletes its own report"
    failed.write_text("my own notes, not a report")
    capsys.readouterr()
    assert "art.failed-report.json: it is not a file prunec wrote" in refused(spec, out, capsys)
    assert failed.read_text() == "my own notes, not a report"
