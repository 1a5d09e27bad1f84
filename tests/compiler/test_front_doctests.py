"""Every docstring example in the front-end modules runs (house style)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["prunec.grammar.parser", "prunec.compiler.syntax", "prunec.compiler.fmt",
           "prunec.compiler.checks", "prunec.compiler.explain", "prunec.compiler.blocks",
           "prunec.compiler.lower", "prunec.compiler.render", "prunec.compiler.shape",
           "prunec.compiler.driver", "prunec.compiler.files", "prunec.compiler.commands"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
