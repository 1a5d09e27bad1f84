"""Fixtures of the runtime tests: a tiny model saved as a HF directory, and one real build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import buildkit
import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return buildkit.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tok(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="session")
def built(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real build of the manual plan (the graph compiler once it exists)."""
    from prunec.compiler.ir import ParamsGate, PerplexityGate
    from prunec.runtime.build import BuildOptions, build

    gates = (PerplexityGate("eval", 10.0, None, buildkit.span(30)),
             ParamsGate(10**9, buildkit.span(31)))
    spec = buildkit.make_spec(tiny_dir, plan=buildkit.manual_plan(), gates=gates)
    out = tmp_path_factory.mktemp("built") / "artifact"
    return build(spec, Path.cwd(), BuildOptions(out, quiet=True),
                 {"static": buildkit.compile_fn()})
