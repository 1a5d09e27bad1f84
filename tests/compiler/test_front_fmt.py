"""fmt: canonical layout, comments kept, idempotent and meaning-preserving everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from frontkit import FIXTURES, MALFORMED, SPECS, VALID

from prunec.compiler.driver import check_source
from prunec.compiler.fmt import format_source
from prunec.compiler.ir import strip_spans
from prunec.compiler.lower import Lower
from prunec.grammar.parser import SyntaxProblem, comments, parse

PARSEABLE = SPECS + VALID + sorted((FIXTURES / "fmt").glob("*.prune"))


def _meaning(text: str) -> object:
    low = Lower("x.prune")
    return strip_spans(low.transform(parse(text))), [(d.code, d.message) for d in low.sink]


def _parses(path: Path) -> bool:
    try:
        parse(path.read_text())
    except SyntaxProblem:
        return False
    return True


ALL = PARSEABLE + [p for p in MALFORMED if _parses(p)]


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fmt_is_idempotent_and_keeps_meaning_and_comments(path: Path) -> None:
    text = path.read_text()
    once = format_source(text)
    assert format_source(once) == once
    assert _meaning(once) == _meaning(text)
    assert [c.text for c in comments(once)] == [c.text for c in comments(text)]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_specs_are_formatted(path: Path) -> None:
    assert format_source(path.read_text()) == path.read_text()


def test_messy_spec_golden(golden) -> None:  # type: ignore[no-untyped-def]
    golden("fmt/messy.prune", format_source((FIXTURES / "fmt" / "messy.prune").read_text()))


def test_formatted_messy_spec_still_checks() -> None:
    src = FIXTURES / "fmt" / "messy.prune"
    spec, diags = check_source(format_source(src.read_text()), str(src))
    assert spec is not None, [d.headline() for d in diags]


def test_empty_input_formats_to_empty() -> None:
    assert format_source("") == ""
    assert format_source("\n\n  \n") == ""
    assert format_source("# only a comment\n\n\n// two\n") == "# only a comment\n\n// two\n"
