"""Rendering: plain text, colours on a terminal, long lines cut to a window, JSON."""

from __future__ import annotations

import io
import json

from rich.console import Console

from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.render import dumps_json, print_diagnostics, render_text

D = Diagnostic.error("P0104", "unknown method 'x'", Span("s.prune", 2, 7, 2, 8), "try y")


def test_plain_when_not_a_terminal() -> None:
    buf = io.StringIO()
    print_diagnostics([D], Console(file=buf), sources={"s.prune": "model demo\nprune x {}\n"})
    assert buf.getvalue() == (
        "s.prune:2:7: error[P0104]: unknown method 'x'\n"
        "   2 | prune x {}\n"
        "     |       ^\n"
        "     = hint: try y\n"
    )


def test_colours_on_a_terminal_keep_brackets() -> None:
    buf = io.StringIO()
    print_diagnostics([D], Console(file=buf, force_terminal=True, width=200),
                      sources={"s.prune": "model demo\nprune x {}\n"})
    out = buf.getvalue()
    assert "\x1b[" in out and "error[P0104]" in out and "prune x {}" in out


def test_long_lines_are_cut_around_the_caret() -> None:
    line = "x" * 500_000 + "BAD" + "y" * 500_000
    d = Diagnostic.error("P0004", "bad", Span("f", 1, 500_001, 1, 500_004))
    text = render_text(d, line)
    assert max(len(t) for t in text.split("\n")) < 140
    shown, caret = text.split("\n")[1:3]
    assert shown[caret.index("^"):caret.index("^") + 3] == "BAD"


def test_missing_source_line_is_left_out() -> None:
    assert render_text(D, None) == (
        "s.prune:2:7: error[P0104]: unknown method 'x'\n     = hint: try y")


def test_json() -> None:
    data = json.loads(dumps_json({"s.prune": [D]}))
    assert data["files"][0]["errors"] == 1
    assert data["files"][0]["diagnostics"][0] == D.to_json()
