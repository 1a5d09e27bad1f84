"""Where a dataset's data lives on disk: paths and globs resolved against the spec's folder.

The one place that turns ``DatasetDecl.paths`` into files, shared by the checks (which
report problems) and the backend (which reads the files). Invariants: paths are relative
to the spec's directory unless absolute (``~`` expands); globs (``*``, ``?``, ``[``) expand in sorted order
to regular files; text/jsonl entries must be readable files, hf-disk entries directories.
Never reads file contents (sizes only), so checks stay fast.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from prunec.compiler.ir import DataFormat, DatasetDecl

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Resolved:
    """The files of one dataset, and what is wrong with its paths (empty when fine)."""

    files: tuple[Path, ...]
    problems: tuple[str, ...]

    def size_bytes(self) -> int:
        """Bytes on disk (a directory counts the files under it)."""
        found = [f for p in self.files for f in ([p] if p.is_file() else p.rglob("*"))]
        return sum(f.stat().st_size for f in found if f.is_file())


def resolve(decl: DatasetDecl, spec_dir: Path) -> Resolved:
    files: list[Path] = []
    problems: list[str] = []
    for pattern in decl.paths:
        got, problem = _resolve_one(pattern, spec_dir, decl.format)
        files += got
        if problem:
            problems.append(problem)
    return Resolved(tuple(dict.fromkeys(files)), tuple(problems))


def _resolve_one(pattern: str, spec_dir: Path, fmt: DataFormat) -> tuple[list[Path], str]:
    full = spec_dir / Path(pattern).expanduser()
    if _GLOB_CHARS & set(pattern):
        matches = sorted(Path(m) for m in glob.glob(str(full), recursive=True))
        matches = [m for m in matches if _fits(m, fmt)]
        return matches, "" if matches else f"the pattern '{pattern}' matches no file"
    return ([full], "") if not (problem := _path_problem(full, pattern, fmt)) else ([], problem)


def _fits(path: Path, fmt: DataFormat) -> bool:
    return path.is_dir() if fmt is DataFormat.HF_DISK else path.is_file()


def _path_problem(path: Path, shown: str, fmt: DataFormat) -> str:
    if not path.exists():
        return f"'{shown}' does not exist"
    if fmt is DataFormat.HF_DISK:
        return "" if path.is_dir() else f"'{shown}' is not a directory (hf-disk datasets are)"
    if not path.is_file():
        return f"'{shown}' is not a file"
    return "" if os.access(path, os.R_OK) else f"'{shown}' is not readable"
