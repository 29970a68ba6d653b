"""Fixtures for the graphile-worker interop tests.

Every test here needs Node and ``tests/interop/node_modules`` (graphile-worker
0.17.3 from ``npm ci``). The session runs ``npm ci`` itself the first time a
test needs it (``support.node_problem``), so ``python -m pytest tests`` on a
fresh clone runs them. Locally a missing toolchain skips them with the reason;
under ``CI=true`` it fails them, so CI can never pass by skipping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..conftest import drop_schema, new_schema_name
from .support import GraphileWorker, in_ci, node_problem


@pytest.fixture(autouse=True)
def _require_graphile_worker() -> None:
    problem = node_problem()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"interop tests must run in CI: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A fresh schema whose name needs quoting (capitals, a double quote, a space,
    non-ASCII), so every statement of both implementations and of gw.js must
    quote it; dropped afterwards."""
    name = new_schema_name('Interop "Q" ü')
    yield name
    await drop_schema(database_url, name)


@pytest.fixture
async def gw(database_url: str, schema: str) -> AsyncIterator[GraphileWorker]:
    """Spawns gw.js on the test database; Node pools still running at the end are killed.

    Depends on ``schema`` so that the pools die before the schema is dropped.
    """
    driver = GraphileWorker(database_url)
    try:
        yield driver
    finally:
        await driver.close()
