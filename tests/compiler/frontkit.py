"""Helpers shared by the front-end tests: fixture paths and a readable IR dump."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from prunec.compiler.diagnostics import Span

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.prune"))
FIXTURES = ROOT / "tests" / "fixtures"
VALID = sorted((FIXTURES / "valid").glob("*.prune"))
MALFORMED = sorted((FIXTURES / "malformed").glob("*.prune"))
HUB_CACHE = FIXTURES / "hub"


def dump_ir(node: object) -> str:
    """``dump`` without trailing spaces, newline-terminated (what IR goldens hold)."""
    return "\n".join(line.rstrip() for line in dump(node).splitlines()) + "\n"


def dump(node: object, indent: int = 0) -> str:
    """One line per field; spans as @line:col-line:col (files left out)."""
    pad = "  " * indent
    if isinstance(node, Span):
        return f"@{node.line}:{node.col}-{node.end_line}:{node.end_col}"
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        span = getattr(node, "span", None)
        head = type(node).__name__ + (f" {dump(span)}" if isinstance(span, Span) else "")
        lines = [head]
        for f in dataclasses.fields(node):
            if f.name in ("span", "file"):
                continue
            lines.append(f"{pad}  {f.name}: {dump(getattr(node, f.name), indent + 1)}")
        return "\n".join(lines)
    if isinstance(node, tuple):
        if not node:
            return "()"
        return "\n".join([""] + [f"{pad}  - {dump(v, indent + 2)}" for v in node])
    if isinstance(node, enum.Enum):
        return str(node.value)
    return repr(node)
