"""The support table (compiler.families) is the README's matrix and the checks' source."""

from __future__ import annotations

import re
from pathlib import Path

from prunec.compiler.families import FAMILIES, family, support_matrix
from prunec.compiler.shape import SUPPORTED

README = Path(__file__).resolve().parents[2] / "README.md"
MATRIX = re.compile(r"<!-- support-matrix: begin -->\n(.*?)\n<!-- support-matrix: end -->",
                    re.DOTALL)


def test_readme_matrix_is_the_rendered_table() -> None:
    found = MATRIX.findall(README.read_text(encoding="utf-8"))
    assert found == [support_matrix()], "run python -m prunec.compiler.families"


def test_supported_families_are_the_table_rows() -> None:
    assert SUPPORTED == tuple(f.model_type for f in FAMILIES)
    assert len(set(SUPPORTED)) == len(SUPPORTED)
    assert all(family(name).model_type == name for name in SUPPORTED)


def test_matrix_has_a_row_per_family() -> None:
    rows = support_matrix().splitlines()[2:]
    assert len(rows) == len(FAMILIES)
    qwen3, phi3 = (next(r for r in rows if f"`{n}`" in r) for n in ("qwen3", "phi3"))
    assert qwen3.split(" | ")[4:6] == ["yes", "yes"], "qwen3: probe and prompt mode"
    assert phi3.split(" | ")[4:6] == ["yes", "yes"], "phi3: probe and prompt mode"
