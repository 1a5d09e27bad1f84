"""Fixtures of the graph-pass tests: each tiny variant of ``graphkit`` captured once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from graphkit import VARIANTS, Captured
from tinymodels import torch_threads


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def captured(request: pytest.FixtureRequest) -> Captured:
    return Captured(VARIANTS[request.param], seed=len(request.param))



@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny forwards run single-threaded (restored after each test); the graph-pass modules
    use it for every test (``pytestmark``)."""
    with torch_threads(1):
        yield
