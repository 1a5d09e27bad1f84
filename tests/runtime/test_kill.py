"""A build killed at any point leaves no partial artifact; an existing artifact survives.

Each case runs a real build (``buildkit.py`` as a script: tiny model, manual plan, the ONNX
file of the session's real build copied in as the compiled model) in a subprocess that
pauses at one checkpoint (``prunec.runtime.artifact.checkpoint``), where it is signalled.
All cases run in parallel to keep the wall time down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import buildkit
import pytest

from prunec.runtime.artifact import clean_stale

# (checkpoint to pause at, signal, expected exit status or None for "killed")
# compile: a half-written temp dir; report-written: a complete one, not yet published;
# exchanged: new one published, old one still at the temp name.
CASES = [
    ("compile", signal.SIGKILL, None),
    ("report-written", signal.SIGKILL, None),
    ("exchanged", signal.SIGKILL, None),
    ("evaluate_pruned", signal.SIGTERM, 143),
]
SCRIPT = Path(buildkit.__file__)


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def start(case: int, pause: str, workdir: Path, tiny_dir: Path, onnx: Path) -> Any:
    log = workdir / f"checkpoints-{case}"
    env = {**os.environ, "PRUNEC_CHECKPOINT_FILE": str(log), "PRUNEC_CHECKPOINT_PAUSE": pause}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tiny_dir),
                             str(workdir / f"art{case}"), str(onnx)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, log


def wait_for(log: Path, name: str, proc: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        if log.exists() and name in log.read_text().split():
            return
        if proc.poll() is not None:
            pytest.fail(f"build exited early ({proc.returncode}): {proc.stdout.read()!r}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"checkpoint {name} not reached")


def test_killed_builds_leave_old_or_new_never_partial(tiny_dir: Path, built: Any,
                                                      tmp_path: Path) -> None:
    from test_build import fast_build

    olds = {}
    for i in range(len(CASES)):
        fast_build(tiny_dir, built, tmp_path / f"art{i}")
        olds[i] = snapshot(tmp_path / f"art{i}")
    onnx = built.artifact / "model.onnx"
    procs = [start(i, pause, tmp_path, tiny_dir, onnx) for i, (pause, _, _) in enumerate(CASES)]
    deadline = time.monotonic() + 240
    for (proc, log), (pause, sig, _) in zip(procs, CASES):
        wait_for(log, pause, proc, deadline)
        proc.send_signal(sig)
    for i, ((proc, _), (pause, sig, status)) in enumerate(zip(procs, CASES)):
        rc = proc.wait(timeout=60)
        assert rc == (status if status is not None else -signal.SIGKILL), (pause, sig)
        target = tmp_path / f"art{i}"
        now = snapshot(target)
        new_and_complete = (now.keys() == olds[i].keys() and now != olds[i])
        assert now == olds[i] or (pause == "exchanged" and new_and_complete), pause
        if status is not None:  # a clean exit removes its own temp directory
            assert not list(tmp_path.glob(f".art{i}.prunec-*")), pause
        clean_stale(target)
        assert not list(tmp_path.glob(f".art{i}.prunec-*")), "stale temp dirs cleaned"
        assert snapshot(target) == now


def test_killed_between_renames_is_repaired(tiny_dir: Path, built: Any, tmp_path: Path) -> None:
    """The fallback path (no renameat2): killed after moving the old artifact away."""
    from test_build import fast_build

    target = tmp_path / "art"
    fast_build(tiny_dir, built, target)
    old = snapshot(target)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(target, tmp_path / f".art.prunec-old-{dead.pid}")  # the state such a kill leaves
    assert fast_build(tiny_dir, built, target).passed  # the next build repairs, then replaces
    assert snapshot(target).keys() == old.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
