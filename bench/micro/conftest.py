"""``impl``: each twin of kongtask._core in turn (ids ``python`` and ``cython``)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from kongtask import _core

_TWINS = _core.twins()


@pytest.fixture(scope="session", params=["python", "cython"])
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    if request.param not in _TWINS:
        message = "compiled twin missing: run `python setup.py build_ext --inplace`"
        if os.environ.get("KONGTASK_NO_EXTENSIONS", "") not in ("", "0"):
            pytest.skip(message)
        pytest.fail(message)
    return SimpleNamespace(name=request.param, **_TWINS[request.param])
