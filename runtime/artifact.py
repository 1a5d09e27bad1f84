"""Atomic artifact directories: a build's output appears complete at its path, or not at all.

Protocol for a target directory ``D`` (used by the build and by the model cache):
1. files are written into ``.D.prunec-tmp-<pid>``, a sibling of ``D`` (same filesystem);
2. on success the temporary directory takes ``D``'s place by ``rename``: with Linux's
   ``renameat2(RENAME_EXCHANGE)`` an existing ``D`` is swapped out in one atomic step (the
   old contents end up at the temporary name and are deleted); where that call is missing,
   the old ``D`` is first renamed to ``.D.prunec-old-<pid>``, the new one renamed in, and
   the old one deleted;
3. on any exception the temporary directory is deleted.
A process killed at any moment (SIGKILL included) therefore leaves either the old ``D`` or
the new one at ``D`` — never a partial one — plus possibly a stale ``.D.prunec-*-<pid>``
sibling. ``clean_stale(D)`` (run by the next build) deletes stale siblings whose process is
gone, and moves a stale ``-old-`` sibling back to ``D`` if ``D`` is missing (a kill between
the two renames of the fallback path).

An existing ``D`` is only replaced when it looks like a prunec artifact (it holds
``ARTIFACT_MARKER``) or is empty: ``-o ~`` must never delete a home directory.

``checkpoint(name)`` is a fault-injection hook for the kill tests: when the environment
variable ``PRUNEC_CHECKPOINT_FILE`` names a file, each checkpoint appends its name there, and
the checkpoint named by ``PRUNEC_CHECKPOINT_PAUSE`` then sleeps ``PRUNEC_CHECKPOINT_SLEEP``
seconds (default 120), so that a test can signal the build at a known point. Without the
variables it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import time
from pathlib import Path
from types import TracebackType

ARTIFACT_MARKER = "report.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def temp_dir_for(target: Path) -> Path:
    """A fresh, empty temporary sibling of ``target`` owned by this process."""
    tmp = target.parent / f".{target.name}.prunec-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def old_dir_for(target: Path) -> Path:
    return target.parent / f".{target.name}.prunec-old-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_siblings(target: Path) -> list[tuple[Path, str]]:
    """Leftovers of dead processes next to ``target``: (path, "tmp" | "old")."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.prunec-(tmp|old)-(\d+)$")
    if not target.parent.is_dir():
        return []
    found = []
    for p in sorted(target.parent.iterdir()):
        m = pattern.match(p.name)
        if m and not pid_alive(int(m.group(2))):
            found.append((p, m.group(1)))
    return found


def clean_stale(target: Path) -> list[Path]:
    """Delete stale siblings of dead builds (restoring an old artifact if ``target`` is gone)."""
    removed = []
    for path, kind in stale_siblings(target):
        if kind == "old" and not target.exists():
            os.rename(path, target)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def replaceable(target: Path) -> bool:
    """True when ``target`` may be replaced: absent, an empty directory, or a prunec artifact."""
    if not target.exists():
        return True
    if not target.is_dir():
        return False
    return (target / ARTIFACT_MARKER).is_file() or not any(target.iterdir())


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def publish(tmp: Path, target: Path) -> None:
    """Put the finished directory ``tmp`` at ``target``, replacing what was there."""
    checkpoint("publish")
    if target.exists():
        if _exchange(tmp, target):
            checkpoint("exchanged")
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = old_dir_for(target)
        os.rename(target, old)
        checkpoint("old-moved")
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, target)
    checkpoint("published")


class ArtifactDir:
    """``with ArtifactDir(target) as tmp: ...write into tmp...; commit()`` — all or nothing."""

    def __init__(self, target: Path) -> None:
        self.target = target.absolute()
        self.tmp: Path | None = None
        self.committed = False

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.target)
        self.tmp = temp_dir_for(self.target)
        return self.tmp

    def commit(self) -> None:
        assert self.tmp is not None
        publish(self.tmp, self.target)
        self.committed = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.tmp is not None and not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)


def checkpoint(name: str) -> None:
    """Fault-injection hook for kill tests (see the module docstring); a no-op normally."""
    path = os.environ.get("PRUNEC_CHECKPOINT_FILE")
    if not path:
        return
    with open(path, "a") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    if os.environ.get("PRUNEC_CHECKPOINT_PAUSE") == name:
        time.sleep(float(os.environ.get("PRUNEC_CHECKPOINT_SLEEP", "120")))
