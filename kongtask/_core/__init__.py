"""Chooses the compiled (Cython) twins of the hot paths, or their pure twins.

Each hot module exists twice: ``NAME.pyx`` (compiled to ``kongtask._core.NAME``)
and ``NAME_py.py``, with the same names and behaviour. Everything else in
kongtask imports from here, never from a twin directly, so one switch decides.

``KONGTASK_NO_EXTENSIONS=1`` forces the pure twins. ``IMPLEMENTATION`` is
``"cython"`` only when every compiled module loaded; a partial build is
reported as ``"python"`` and uses the pure twins throughout, so the two
implementations are never mixed.
"""

from __future__ import annotations

import os
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING

_MODULES = ("decode", "dispatch", "payload", "schedule")


def _load() -> tuple[str, dict[str, ModuleType]]:
    if os.environ.get("KONGTASK_NO_EXTENSIONS", "") not in ("", "0"):
        return "python", {name: import_module(f"{__name__}.{name}_py") for name in _MODULES}
    try:
        return "cython", {name: import_module(f"{__name__}.{name}") for name in _MODULES}
    except ImportError:
        return "python", {name: import_module(f"{__name__}.{name}_py") for name in _MODULES}


IMPLEMENTATION, _loaded = _load()

if TYPE_CHECKING:
    # Callers see the pure twin's types; the compiled twin has the same names
    # and signatures (tests/core checks both against the same cases).
    from . import decode_py as decode
    from . import dispatch_py as dispatch
    from . import payload_py as payload
    from . import schedule_py as schedule
else:
    decode = _loaded["decode"]
    dispatch = _loaded["dispatch"]
    payload = _loaded["payload"]
    schedule = _loaded["schedule"]


def twins() -> dict[str, dict[str, ModuleType]]:
    """Both implementations side by side, for the tests that compare them.

    Returns ``{"python": {...}, "cython": {...}}``; the ``cython`` entry is
    missing when the extensions are not built.
    """
    result = {"python": {name: import_module(f"{__name__}.{name}_py") for name in _MODULES}}
    try:
        result["cython"] = {name: import_module(f"{__name__}.{name}") for name in _MODULES}
    except ImportError:
        pass
    # Importing a submodule rebinds the package attribute of the same name;
    # put the chosen twins back so this call never mixes implementations.
    globals().update(_loaded)
    return result


__all__ = ["IMPLEMENTATION", "decode", "dispatch", "payload", "schedule", "twins"]
