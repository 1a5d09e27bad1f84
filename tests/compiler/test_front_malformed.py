"""The malformed corpus: each spec names its expected error code and line:col in its
first line (``# expect: P0206 4:3``); rendered diagnostics are golden files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from frontkit import MALFORMED, ROOT

from prunec.compiler.codes import CODES, WARNINGS
from prunec.compiler.driver import load_spec
from prunec.compiler.render import _SourceLines, render_text

EXPECT = re.compile(r"# expect: (P\d{4}) (\d+):(\d+)")


def test_corpus_is_big_enough() -> None:
    assert len(MALFORMED) >= 40


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.stem)
def test_malformed_spec(path: Path, golden) -> None:  # type: ignore[no-untyped-def]
    m = EXPECT.match(path.read_text())
    assert m, f"{path} lacks an '# expect: CODE line:col' header"
    code, line, col = m.group(1), int(m.group(2)), int(m.group(3))
    spec, diags = load_spec(path)
    assert spec is None
    got = [(d.code, d.span.line, d.span.col) for d in diags if d.is_error]
    assert (code, line, col) in got, got
    lines = _SourceLines({})
    text = "\n".join(render_text(d, lines.get(d.span.file, d.span.line)) for d in diags)
    golden(f"diagnostics/{path.stem}.txt", text.replace(str(ROOT) + "/", "") + "\n")


def test_every_code_in_the_sources_is_in_the_table() -> None:
    used = set()
    for folder in ("grammar", "compiler", "passes", "runtime"):
        for src in (ROOT / folder).rglob("*.py"):
            used |= set(re.findall(r'"(P\d{4})"', src.read_text()))
    assert used - set(CODES) == set()
    assert WARNINGS <= set(CODES)
    assert all(desc and "\n" not in desc for desc in CODES.values())


def test_corpus_covers_most_codes() -> None:
    seen = {EXPECT.match(p.read_text()).group(1) for p in MALFORMED}  # type: ignore[union-attr]
    assert len(seen) >= 40
