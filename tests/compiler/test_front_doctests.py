"""Every docstring example in the front-end modules runs (house style)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

from prunec import compiler

MODULES = ["prunec.grammar.parser"] + [
    f"prunec.compiler.{m.name}" for m in pkgutil.iter_modules(compiler.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
