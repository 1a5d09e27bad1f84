"""runtime.artifact: publish / replace atomically, refuse foreign directories, clean up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunec.runtime.artifact import (
    ArtifactDir,
    clean_stale,
    old_dir_for,
    publish,
    replaceable,
    temp_dir_for,
)


def fill(d: Path, tag: str) -> None:
    (d / "report.json").write_text(tag)
    (d / "model.onnx").write_text(tag * 10)


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
    target = tmp_path / "out"
    target.mkdir()
    fill(target, "old")
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
    target = tmp_path / "out"
    target.mkdir()
    fill(target, "old")
    tmp = temp_dir_for(target)
    fill(tmp, "new")
    publish(tmp, target)
    assert (target / "report.json").read_text() == "new"
    assert not old_dir_for(target).exists() and not tmp.exists()
