"""The method table: every ``prune METHOD`` the language accepts has exactly one planner."""

from __future__ import annotations

from prunec.compiler.ir import StaticMethod
from prunec.passes.methods import METHODS
from prunec.passes.methods.oneshot import run_oneshot
from prunec.passes.methods.search import run_search


def test_every_method_has_a_planner() -> None:
    assert set(METHODS) == set(StaticMethod)


def test_searches_run_the_search() -> None:
    assert METHODS[StaticMethod.MULTIPRUNER] is run_search
    assert METHODS[StaticMethod.BLOCKPRUNER] is run_search
    assert all(METHODS[m] is not run_search and METHODS[m] is not run_oneshot
               for m in (StaticMethod.MAGNITUDE, StaticMethod.WANDA_SP, StaticMethod.FLAP))
