"""The grammar and the parser: trees, positions, named parse errors, comments, caching."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunec.grammar.parser import ERROR_EXAMPLES, SyntaxProblem, comments, parse, parser

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.prune"))


def test_parser_is_built_once() -> None:
    assert parser() is parser()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_parse_tree_golden(path: Path, golden) -> None:  # type: ignore[no-untyped-def]
    golden(f"parse/{path.stem}.txt", parse(path.read_text()).pretty())


@pytest.mark.parametrize("code", sorted(ERROR_EXAMPLES))
def test_each_error_example_gets_its_code(code: str) -> None:
    for example in ERROR_EXAMPLES[code][2]:
        with pytest.raises(SyntaxProblem) as info:
            parse(example)
        assert info.value.code == code, example


def test_same_error_same_code_wherever_it_occurs() -> None:
    codes = set()
    for prefix in ("", "model demo\n", "model demo\nname = \"x\"\nprobe { ratio = 1% }\n"):
        with pytest.raises(SyntaxProblem) as info:
            parse(prefix + "probe {\n  ratio =\n}\n")
        codes.add(info.value.code)
    assert codes == {"P0006"}


def test_positions_are_one_based_and_end_exclusive() -> None:
    tree = parse('model demo\nname = "abc"\n')
    attr = tree.children[1]
    assert (attr.meta.line, attr.meta.column, attr.meta.end_column) == (2, 1, 13)


@pytest.mark.parametrize("text,code,line,col", [
    ("model demo\nname = \"abc\n", "P0008", 2, 8),
    ("model demo {\n", "P0005", 1, 12),
    ("model demo\n\n  $", "P0004", 3, 3),
    ("model demo\nprobe {\n  ratio 3\n}", "P0007", 3, 9),
    ("[[[[[[[[[[", "P0012", 1, 1),
])
def test_named_errors_with_positions(text: str, code: str, line: int, col: int) -> None:
    with pytest.raises(SyntaxProblem) as info:
        parse(text)
    assert (info.value.code, info.value.line, info.value.col) == (code, line, col)


def test_comments_skip_strings_and_keep_positions() -> None:
    text = 'name = "a # b // c"  # real\n// also\nmodel demo #x\n'
    got = [(c.line, c.col, c.text) for c in comments(text)]
    assert got == [(1, 22, "# real"), (2, 1, "// also"), (3, 12, "#x")]


def test_keywords_are_names_where_no_keyword_fits() -> None:
    tree = parse('model demo\ndataset plan text "x.txt"\n')
    assert str(tree.children[1].children[0]) == "plan"


def test_one_error_per_faulty_item() -> None:
    from prunec.grammar.parser import parse_all

    text = ("model demo\nprobe {\n  ratio 40%\n}\nprune magnitude {\n  target = 20%\n"
            'dataset b text "y"\ngates { params <= }\n')
    tree, problems = parse_all(text)
    assert tree is None
    assert [(p.code, p.line, p.col) for p in problems] == [
        ("P0007", 3, 9), ("P0019", 7, 1), ("P0014", 8, 19)]
    assert "line 5" in (problems[1].hint or "")


def test_recovery_is_bounded() -> None:
    from prunec.grammar.parser import MAX_PROBLEMS, parse_all

    _, problems = parse_all("model demo\n" + "name = = 1\n" * 50)
    assert len(problems) == MAX_PROBLEMS
