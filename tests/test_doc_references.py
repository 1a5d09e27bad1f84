"""Code and docs cite only files inside the repository, and docs/algorithms.md sections exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("grammar", "compiler", "passes", "runtime", "tests", "bench", "docs", "specs")
OUTSIDE = re.compile(r"\.\./shared|shared/docs|/work/")
SECTION_CITE = re.compile(r"docs/algorithms\.md §(\d+)")


def _files() -> list[Path]:
    found = [ROOT / "README.md"]
    for top in SOURCES:
        found += [p for p in (ROOT / top).rglob("*")
                  if p.suffix in {".py", ".md", ".prune", ".lark"} and p.is_file()]
    return found


def test_no_reference_points_outside_the_repository() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _files()
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if OUTSIDE.search(line) and p != Path(__file__).resolve()]
    assert offenders == []


def test_cited_algorithm_sections_exist() -> None:
    text = (ROOT / "docs" / "algorithms.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE))
    cited = {(p.relative_to(ROOT).as_posix(), s) for p in _files()
             for s in SECTION_CITE.findall(p.read_text(encoding="utf-8"))}
    assert cited, "no code cites docs/algorithms.md by section"
    assert {c for c in cited if c[1] not in sections} == set()
