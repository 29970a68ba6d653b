"""Which twin ``kongtask._core`` loaded: CI must notice a silent fallback to pure Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kongtask import _core

ROOT = Path(__file__).resolve().parents[2]
NO_EXTENSIONS = os.environ.get("KONGTASK_NO_EXTENSIONS", "") not in ("", "0")


def test_implementation_matches_environment() -> None:
    expected = "python" if NO_EXTENSIONS else "cython"
    assert expected == _core.IMPLEMENTATION


def _fresh(code: str, **env: str) -> str:
    """Runs ``code`` in a clean interpreter (nothing imported by these tests yet)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_modules_belong_to_the_chosen_twin() -> None:
    names = _fresh(
        "import kongtask._core as c; "
        "print(c.IMPLEMENTATION, c.decode.__name__, c.payload.__name__, c.schedule.__name__)"
    ).split()
    suffix = "_py" if names[0] == "python" else ""
    assert names[1:] == [
        f"kongtask._core.{name}{suffix}" for name in ("decode", "payload", "schedule")
    ]


def test_twins_does_not_switch_the_chosen_modules() -> None:
    """Importing ``kongtask._core.decode`` (as ``twins()`` does) rebinds the package
    attribute ``decode`` to the compiled module; under KONGTASK_NO_EXTENSIONS=1 that
    would silently mix the implementations. ``twins()`` must put the chosen ones back.
    """
    names = _fresh(
        "import kongtask._core as c; c.twins(); "
        "print(c.decode.__name__, c.payload.__name__, c.schedule.__name__)",
        KONGTASK_NO_EXTENSIONS="1",
    ).split()
    assert names == [
        "kongtask._core.decode_py",
        "kongtask._core.payload_py",
        "kongtask._core.schedule_py",
    ]


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_extensions_forces_python(value: str) -> None:
    env = {**os.environ, "KONGTASK_NO_EXTENSIONS": value, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", "import kongtask._core as c; print(c.IMPLEMENTATION)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "python"


def test_twins_have_the_same_public_names() -> None:
    twins = _core.twins()
    if "cython" not in twins:
        if NO_EXTENSIONS:
            pytest.skip("compiled twin not built")
        pytest.fail("compiled twin not built")
    for name in ("decode", "payload", "schedule"):
        pure = twins["python"][name]
        compiled = twins["cython"][name]
        assert sorted(pure.__all__) == sorted(compiled.__all__)
        for attr in pure.__all__:
            assert hasattr(compiled, attr), (name, attr)
