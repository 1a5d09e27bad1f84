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

An existing ``D`` is only replaced when prunec wrote it and nobody changed it since, or when
it is empty: ``-o ~`` (or a directory holding ``report.json`` next to someone's thesis)
must never be deleted. ``commit`` writes ``MANIFEST`` (``.prunec-artifact.json``) into the
finished directory: every directory and file the build wrote, with each file's size and,
up to ``HASHED_UP_TO`` bytes, its sha256 (the model's weight files are recorded by size).
``replace_problem(D)`` accepts ``D`` only when that manifest parses and accounts for exactly
the files and directories in ``D`` (none extra, none missing, none changed, no links);
``require_replaceable`` turns a refusal into P0406 and runs again right before the swap,
so files added during a long build are not lost either. A directory from an older prunec
(``report.json``, no manifest) is refused: the user deletes it. Sibling files a build
replaces or deletes (its failed report, its search state) are handled the same way:
``discard_sibling`` only deletes a regular file holding a JSON object whose ``"format"``
starts with ``prunec-``, and ``require_replaceable`` refuses to start when such a name holds
anything else. ``clean_stale`` only touches real directories (never links or files) under
prunec's own ``.D.prunec-(tmp|old)-<pid>`` names.

``checkpoint(name)`` is a fault-injection hook for the kill tests: when the environment
variable ``PRUNEC_CHECKPOINT_FILE`` names a file, each checkpoint appends its name there, and
the checkpoint named by ``PRUNEC_CHECKPOINT_PAUSE`` then sleeps ``PRUNEC_CHECKPOINT_SLEEP``
seconds (default 120), so that a test can signal the build at a known point. Without the
variables it does nothing.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.names import MARKER as MANIFEST  # the name checks keep free for it

MANIFEST_FORMAT = "prunec-artifact/1"
HASHED_UP_TO = 16 << 20  # bytes; bigger files (weights) are recorded by size only
OWN_FORMAT = "prunec-"  # the "format" prefix of every JSON file prunec writes beside D
FAILED_REPORT_FORMAT = "prunec-failed-report/1"  # DIR.failed-report.json's "format"
REFUSAL_HINT = ("prunec only replaces a directory it wrote itself, unchanged since (see its "
                f"{MANIFEST}); choose another -o DIR, or delete this one yourself")
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
        if path.is_symlink() or not path.is_dir():
            continue  # prunec only ever leaves directories under these names
        if kind == "old" and not target.exists():
            os.rename(path, target)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# ------------------------------------------------------------- the overwrite guard


def replaceable(target: Path) -> bool:
    """True when ``target`` may be replaced: absent, empty, or exactly as prunec wrote it."""
    return replace_problem(target) is None


def require_replaceable(target: Path, span: Span, siblings: Iterable[Path] = ()) -> None:
    """P0406 (nothing touched) unless ``target`` may be replaced and each of ``siblings`` (files
    the build replaces or deletes beside it) is absent or prunec's own."""
    for path, problem in [(target, replace_problem(target))] + [
            (p, sibling_problem(p)) for p in siblings]:
        if problem:
            raise CompileError((Diagnostic.error(
                "P0406", f"refusing to replace {path}: it {problem}", span, REFUSAL_HINT),))


def replace_problem(target: Path) -> str | None:
    """Why a build must not replace ``target`` (None: absent, empty, or prunec's, unchanged)."""
    if not os.path.lexists(target):
        return None
    if target.is_symlink() or not target.is_dir():
        return "is not a directory" if not target.is_symlink() else "is a symbolic link"
    try:
        if not any(target.iterdir()):
            return None
        recorded = read_manifest(target)
        if recorded is None:
            return _unmarked(target)
        return manifest_mismatch(recorded, manifest_of(target))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _unmarked(target: Path) -> str:
    if (target / "report.json").exists():
        return (f"has a report.json but no readable {MANIFEST} (an artifact of an older "
                "prunec, or not prunec's)")
    return f"is not a prunec artifact (no {MANIFEST})"


def manifest_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first difference between what prunec wrote and what the directory holds."""
    now, then = current["files"], recorded["files"]
    dirs_now, dirs_then = set(current["dirs"]), set(recorded["dirs"])
    extra = sorted(set(now) - set(then)) + sorted(dirs_now - dirs_then)
    missing = sorted(set(then) - set(now)) + sorted(dirs_then - dirs_now)
    changed = [name for name in sorted(now) if name in then and now[name] != then[name]]
    if extra:
        return f"holds {extra[0]}, which prunec did not write"
    if missing:
        return f"lacks {missing[0]}, which prunec wrote"
    if changed:
        return f"holds {changed[0]}, which changed since prunec wrote it"
    return None


# --------------------------------------------------------------------- the manifest


def write_manifest(root: Path) -> None:
    """Record every directory and file under ``root`` in ``root/MANIFEST``."""
    (root / MANIFEST).write_text(json.dumps(manifest_of(root), indent=1) + "\n")


def read_json_file(path: Path) -> Any:
    """The JSON in ``path`` when it is a regular file (not a link) that parses, else None."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_manifest(root: Path) -> dict[str, Any] | None:
    """``root``'s manifest, None when it is missing, unreadable or malformed."""
    data = read_json_file(root / MANIFEST)
    ok = (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
          and isinstance(data.get("files"), dict) and isinstance(data.get("dirs"), list)
          and all(isinstance(d, str) for d in data["dirs"]))
    return data if ok else None


def manifest_of(root: Path) -> dict[str, Any]:
    """What ``root`` holds now (``MANIFEST`` itself excluded), in the manifest's form."""
    files: dict[str, Any] = {}
    dirs: list[str] = []
    for rel, st in _entries(root):
        if stat.S_ISDIR(st.st_mode):
            dirs.append(rel)
        elif rel != MANIFEST:
            files[rel] = _record(root / rel, st)
    return {"format": MANIFEST_FORMAT, "dirs": sorted(dirs), "files": dict(sorted(files.items()))}


def _entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under ``root``; links are not followed, and an
    unreadable directory raises instead of being skipped."""
    def fail(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            yield path.relative_to(root).as_posix(), path.lstat()


def _record(path: Path, st: os.stat_result) -> dict[str, Any]:
    """A file's size and (small files) sha256; links and special files never match one."""
    if not stat.S_ISREG(st.st_mode):
        return {"special": stat.S_IFMT(st.st_mode)}
    if st.st_size > HASHED_UP_TO:
        return {"size": st.st_size}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": st.st_size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- sibling files


def sibling_problem(path: Path) -> str | None:
    """Why the build must not replace or delete ``path`` (None: absent or prunec's own)."""
    if not os.path.lexists(path) or is_own_json(path):
        return None
    return (f"is not a file prunec wrote (a JSON object with a \"format\" of {OWN_FORMAT}...)")


def is_own_json(path: Path) -> bool:
    """True when ``path`` is a regular file holding a JSON object whose ``"format"`` starts
    with ``prunec-`` (every JSON file prunec writes beside an artifact carries one)."""
    data = read_json_file(path)
    return isinstance(data, dict) and str(data.get("format", "")).startswith(OWN_FORMAT)


def discard_sibling(path: Path) -> None:
    """Delete ``path`` when it is prunec's own (``is_own_json``); leave anything else alone."""
    if is_own_json(path):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- publishing


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
    """``with ArtifactDir(target) as tmp: ...write into tmp...; commit()`` — all or nothing.
    ``commit`` records the manifest and refuses (P0406 on ``span``) a target that stopped
    being replaceable during the build."""

    def __init__(self, target: Path, span: Span | None = None) -> None:
        self.target = target.absolute()
        self.span = span or Span.unknown(str(self.target))
        self.tmp: Path | None = None
        self.committed = False

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.target)
        self.tmp = temp_dir_for(self.target)
        return self.tmp

    def commit(self) -> None:
        assert self.tmp is not None
        write_manifest(self.tmp)
        require_replaceable(self.target, self.span)
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
