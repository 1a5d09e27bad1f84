"""Rendering diagnostics for people (rich or plain text) and for machines (JSON).

Text form, one block per diagnostic::

    specs/x.prune:3:7: error[P0104]: unknown method 'multiprunr'
       3 | prune multiprunr {
         |       ^^^^^^^^^^
         = hint: did you mean 'multipruner'?

Colours only when the console is a terminal (rich decides); otherwise the same text,
plain. Source lines come from ``sources`` (file -> text) or are read from disk; a line
that cannot be read is simply left out, and long lines are cut to a window around the
caret, so rendering never fails and never floods the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from rich.console import Console
from rich.text import Text

from prunec.compiler.diagnostics import Diagnostic, Severity

WINDOW = 100
_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.NOTE: "cyan"}


def print_diagnostics(diags: Iterable[Diagnostic], console: Console | None = None,
                      sources: Mapping[str, str] | None = None) -> None:
    """Print each diagnostic with its source line and caret (to stderr by default)."""
    console = console or Console(stderr=True, highlight=False)
    lines = _SourceLines(sources or {})
    for d in diags:
        if console.is_terminal:
            console.print(_styled(d, lines), highlight=False, soft_wrap=True)
        else:
            console.file.write(render_text(d, lines.get(d.span.file, d.span.line)) + "\n")


def render_text(d: Diagnostic, source_line: str | None) -> str:
    """The plain-text block of one diagnostic (what golden files compare)."""
    out = [d.headline()]
    if source_line is not None:
        out += _excerpt(d, source_line)
    if d.hint:
        out.append(f"{' ' * _gutter(d)} = hint: {d.hint}")
    return "\n".join(out)


def _gutter(d: Diagnostic) -> int:
    return len(str(d.span.line)) + 3


def _excerpt(d: Diagnostic, line: str) -> list[str]:
    start = max(d.span.col - 1, 0)
    end = d.span.end_col - 1 if d.span.end_line == d.span.line else len(line)
    end = max(min(end, len(line)), start + 1)
    lo = max(0, min(start - WINDOW // 2, len(line) - WINDOW))
    shown = line[lo:lo + WINDOW].expandtabs(1)
    pad = " " * (start - lo)
    width = max(1, min(end, lo + WINDOW) - start)
    prefix = "..." if lo else ""
    no = str(d.span.line)
    return [f"{' ' * 3}{no} | {prefix}{shown}",
            f"{' ' * (3 + len(no))} | {' ' * len(prefix)}{pad}{'^' * width}"]


def _styled(d: Diagnostic, lines: _SourceLines) -> Text:
    """The text block with colours: severity and code coloured, caret line bold."""
    text = render_text(d, lines.get(d.span.file, d.span.line)).split("\n")
    label = f"{d.severity.value}[{d.code}]"
    before, _, after = text[0].partition(label)
    out = Text.assemble((before, "bold"), (label, _STYLE[d.severity]), (after, "bold"))
    for line in text[1:]:
        out.append("\n")
        out.append(line, style="bold red" if line.rstrip().endswith("^") else "")
    return out


class _SourceLines:
    """Lines of source files, read at most once each, ``None`` when unavailable."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self._lines = {f: _split(t) for f, t in sources.items()}

    def get(self, file: str, line: int) -> str | None:
        if file not in self._lines:
            self._lines[file] = _read_lines(file)
        lines = self._lines[file]
        return lines[line - 1] if 1 <= line <= len(lines) else None


def _read_lines(file: str) -> list[str]:
    try:
        return _split(Path(file).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return []


def _split(text: str) -> list[str]:
    """Lines as the parser counts them (only \\n ends a line)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


# ------------------------------------------------------------------------- JSON


def diagnostics_json(diags: Iterable[Diagnostic]) -> list[dict[str, object]]:
    return [d.to_json() for d in diags]


def dumps_json(by_file: Mapping[str, Iterable[Diagnostic]]) -> str:
    """``{"files": [{"file", "errors", "warnings", "diagnostics"}]}`` as indented JSON."""
    files = []
    for file, diags in by_file.items():
        ds = list(diags)
        files.append({
            "file": file,
            "errors": sum(d.is_error for d in ds),
            "warnings": sum(d.severity is Severity.WARNING for d in ds),
            "diagnostics": diagnostics_json(ds),
        })
    return json.dumps({"files": files}, indent=2)
