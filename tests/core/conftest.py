"""Fixtures that run every ``_core`` test against both twins.

``twin`` yields each implementation in turn (ids ``python`` and ``cython``);
``both`` yields the pair for differential tests. A missing compiled twin is a
failure, not a skip, unless ``KONGTASK_NO_EXTENSIONS`` says the pure build is
intended: a silently missing extension is exactly what these tests exist to catch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import pytest

from kongtask import _core

NO_EXTENSIONS = os.environ.get("KONGTASK_NO_EXTENSIONS", "") not in ("", "0")
_TWINS = _core.twins()


@dataclass(frozen=True)
class Twin:
    name: str
    decode: ModuleType
    dispatch: ModuleType
    payload: ModuleType
    schedule: ModuleType

    def __repr__(self) -> str:
        return f"Twin({self.name})"


def _load(name: str) -> Twin:
    if name not in _TWINS:
        message = (
            f"the {name} twin of kongtask._core is not importable; "
            "build it with `pip install -e .` (or `python setup.py build_ext --inplace`)"
        )
        if NO_EXTENSIONS:
            pytest.skip(message + " (KONGTASK_NO_EXTENSIONS is set)")
        pytest.fail(message)
    modules = _TWINS[name]
    return Twin(
        name, modules["decode"], modules["dispatch"], modules["payload"], modules["schedule"]
    )


@pytest.fixture(scope="session", params=["python", "cython"])
def twin(request: pytest.FixtureRequest) -> Twin:
    """Each implementation in turn."""
    return _load(request.param)


@pytest.fixture(scope="session")
def both() -> tuple[Twin, Twin]:
    """(pure, compiled), for tests that feed both the same input."""
    return _load("python"), _load("cython")
