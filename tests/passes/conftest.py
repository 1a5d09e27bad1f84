"""Fixtures of the graph-pass tests: each tiny variant of ``graphkit`` captured once."""

from __future__ import annotations

import pytest

from graphkit import VARIANTS, Captured


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def captured(request: pytest.FixtureRequest) -> Captured:
    return Captured(VARIANTS[request.param], seed=len(request.param))

