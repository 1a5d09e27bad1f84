"""Hypothesis: no input makes the parser or the front-end raise anything but its own errors."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunec.compiler.driver import check_source
from prunec.grammar.parser import SyntaxProblem, parse

ROOT = Path(__file__).resolve().parents[2]
SPEC_TEXTS = [p.read_text() for p in sorted((ROOT / "specs").glob("*.prune"))]
ALPHABET = st.sampled_from(list('{}[]()=,.:-%"#/\\<>*\n \t') + ["model", "demo", "probe",
                           "layers", "ratio", "40%", "1.5x", "dense", "keep", "remove", "0",
                           "3", "heads", "prune", "plan", "gates", "params", "in", "..",
                           "\u00e9", "\x00", "\ufeff", "1e999", "9" * 30, "1e-400"])
# PRUNEC_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the suite fast.
FUZZ = settings(max_examples=int(os.environ.get("PRUNEC_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200))
def test_random_text_never_crashes_the_parser(text: str) -> None:
    try:
        parse(text)
    except SyntaxProblem:
        pass


@FUZZ
@given(st.lists(ALPHABET, max_size=60).map("".join))
def test_token_soup_never_crashes_the_front_end(text: str) -> None:
    spec, diags = check_source(text, str(ROOT / "specs" / "fuzz.prune"))
    assert (spec is None) == any(d.is_error for d in diags)


@FUZZ
@given(st.sampled_from(SPEC_TEXTS), st.integers(0, 10_000), st.integers(0, 12),
       st.text(max_size=8))
def test_mutated_specs_never_crash_the_front_end(base: str, at: int, cut: int,
                                                 insert: str) -> None:
    at %= len(base) + 1
    text = base[:at] + insert + base[at + cut:]
    spec, diags = check_source(text, str(ROOT / "specs" / "mutant.prune"))
    assert (spec is None) == any(d.is_error for d in diags)
    assert all(d.span.line >= 1 and d.span.col >= 1 for d in diags)


@FUZZ
@given(st.sampled_from(SPEC_TEXTS), st.integers(0, 10_000), st.integers(0, 6),
       st.sampled_from(["", "\n", "\n\n", " # c\n", "// d\n", ",", " ", "\n# e\n\n"]))
def test_fmt_is_stable_on_mutated_specs(base: str, at: int, cut: int, insert: str) -> None:
    from prunec.compiler.fmt import format_source
    from prunec.compiler.ir import strip_spans
    from prunec.compiler.lower import Lower

    at %= len(base) + 1
    text = base[:at] + insert + base[at + cut:]
    try:
        tree = parse(text)
    except SyntaxProblem:
        return
    once = format_source(text)
    assert format_source(once) == once
    assert strip_spans(Lower("x").transform(parse(once))) == strip_spans(
        Lower("x").transform(tree))
