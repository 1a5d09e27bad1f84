"""runtime.artifact: publish / replace atomically, refuse foreign directories, clean up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunec.compiler.diagnostics import CompileError, Span
from prunec.runtime.artifact import (
    HASHED_UP_TO,
    MANIFEST,
    ArtifactDir,
    clean_stale,
    discard_sibling,
    old_dir_for,
    publish,
    replace_problem,
    replaceable,
    require_replaceable,
    temp_dir_for,
)

SPAN = Span("t.prune", 1, 1, 1, 2)


def fill(d: Path, tag: str) -> None:
    (d / "report.json").write_text(tag)
    (d / "model.onnx").write_text(tag * 10)


def written(target: Path, tag: str) -> Path:
    """An artifact at ``target`` written by prunec (through ArtifactDir, manifest and all)."""
    art = ArtifactDir(target)
    with art as tmp:
        fill(tmp, tag)
        (tmp / "hf").mkdir()
        (tmp / "hf" / "config.json").write_text("{}")
        art.commit()
    return target


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_new_artifact_appears_complete(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with ArtifactDir(target) as tmp:
        fill(tmp, "new")
        assert not target.exists()
        assert tmp.name == f".out.prunec-tmp-{os.getpid()}"
    assert not target.exists(), "leaving the block without commit publishes nothing"
    art = ArtifactDir(target)
    with art as tmp:
        fill(tmp, "new")
        art.commit()
    assert (target / "report.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_keeps_old_until_new_is_in(tmp_path: Path) -> None:
    target = written(tmp_path / "out", "old")
    with pytest.raises(RuntimeError), ArtifactDir(target) as tmp:
        fill(tmp, "new")
        raise RuntimeError("build failed")
    assert (target / "report.json").read_text() == "old"
    art = ArtifactDir(target)
    with art as tmp:
        fill(tmp, "new")
        art.commit()
    assert (target / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    assert not replaceable(tmp_path / "home")
    (tmp_path / "empty").mkdir()
    assert replaceable(tmp_path / "empty") and replaceable(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    assert not replaceable(tmp_path / "file")


def test_clean_stale_removes_dead_temps_and_restores_old(tmp_path: Path) -> None:
    target, pid = tmp_path / "out", dead_pid()
    stale_tmp = tmp_path / f".out.prunec-tmp-{pid}"
    stale_old = tmp_path / f".out.prunec-old-{pid}"
    mine = temp_dir_for(target)  # a live process's temp dir is left alone
    for d in (stale_tmp, stale_old):
        d.mkdir()
        fill(d, d.name)
    clean_stale(target)
    assert not stale_tmp.exists() and mine.exists()
    assert (target / "report.json").read_text() == stale_old.name, "old artifact restored"
    stale_old.mkdir()
    clean_stale(target)
    assert not stale_old.exists() and (target / "report.json").read_text() == stale_old.name


def test_publish_fallback_without_exchange(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from prunec.runtime import artifact

    monkeypatch.setattr(artifact, "_exchange", lambda a, b: False)
    target = written(tmp_path / "out", "old")
    tmp = temp_dir_for(target)
    fill(tmp, "new")
    publish(tmp, target)
    assert (target / "report.json").read_text() == "new"
    assert not old_dir_for(target).exists() and not tmp.exists()


def test_only_an_unchanged_prunec_artifact_is_replaceable(tmp_path: Path) -> None:
    target = written(tmp_path / "out", "old")
    assert replaceable(target) and (target / MANIFEST).is_file()
    (target / "precious.txt").write_text("mine")
    assert replace_problem(target) == "holds precious.txt, which prunec did not write"
    (target / "precious.txt").unlink()
    (target / "hf" / "notes").mkdir()
    assert replace_problem(target) == "holds hf/notes, which prunec did not write"
    (target / "hf" / "notes").rmdir()
    (target / "report.json").write_text("edited")
    assert replace_problem(target) == "holds report.json, which changed since prunec wrote it"
    (target / "report.json").unlink()
    assert replace_problem(target) == "lacks report.json, which prunec wrote"
    (target / "report.json").write_text("old")
    assert replaceable(target)
    (target / MANIFEST).write_text("{not json")
    assert "older prunec" in (replace_problem(target) or "")


def test_links_and_special_entries_are_never_accounted_for(tmp_path: Path) -> None:
    target = written(tmp_path / "out", "old")
    (target / "model.onnx").unlink()
    (target / "model.onnx").symlink_to(tmp_path)  # same name, now a link to elsewhere
    assert "changed since" in (replace_problem(target) or "")
    (tmp_path / "link").symlink_to(target)
    assert replace_problem(tmp_path / "link") == "is a symbolic link"


def test_big_files_are_recorded_by_size(tmp_path: Path) -> None:
    art = ArtifactDir(tmp_path / "out")
    with art as tmp:
        (tmp / "model.onnx.data").write_bytes(b"\0" * (HASHED_UP_TO + 1))
        art.commit()
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["files"] == {"model.onnx.data": {"size": HASHED_UP_TO + 1}}
    with (tmp_path / "out" / "model.onnx.data").open("ab") as f:
        f.write(b"more")
    assert "changed since" in (replace_problem(tmp_path / "out") or "")


def test_commit_refuses_a_target_that_changed_during_the_build(tmp_path: Path) -> None:
    target = written(tmp_path / "out", "old")
    art = ArtifactDir(target)
    with pytest.raises(CompileError) as exc, art as tmp:
        fill(tmp, "new")
        (target / "thesis.tex").write_text("written while the build ran")
        art.commit()
    assert exc.value.diagnostics[0].code == "P0406"
    assert (target / "thesis.tex").is_file() and (target / "report.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sibling_files_are_only_replaced_or_deleted_when_prunec_wrote_them(
        tmp_path: Path) -> None:
    ours, theirs = tmp_path / "a.failed-report.json", tmp_path / "b.failed-report.json"
    ours.write_text(json.dumps({"format": "prunec-failed-report/1", "passed": False}))
    theirs.write_text(json.dumps({"passed": False}))
    require_replaceable(tmp_path / "a", SPAN, [ours, tmp_path / "absent.json"])
    with pytest.raises(CompileError) as exc:
        require_replaceable(tmp_path / "b", SPAN, [theirs])
    assert exc.value.diagnostics[0].code == "P0406" and str(theirs) in str(exc.value)
    discard_sibling(ours)
    discard_sibling(theirs)
    discard_sibling(tmp_path / "absent.json")
    assert not ours.exists() and theirs.is_file()


def test_clean_stale_leaves_files_and_links_alone(tmp_path: Path) -> None:
    pid, target = dead_pid(), tmp_path / "out"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    (tmp_path / f".out.prunec-tmp-{pid}").symlink_to(tmp_path / "home")
    (tmp_path / f".out.prunec-old-{pid}").write_text("a file, not prunec's")
    assert clean_stale(target) == []
    assert (tmp_path / "home" / "thesis.tex").is_file() and not target.exists()
    assert (tmp_path / f".out.prunec-old-{pid}").is_file()
