"""Package attributes that import their module on first use (PEP 562).

``import kongtask`` and ``kongtask.inspect_cli`` name more than a worker
process needs; the names a worker never touches (the client, the crontab
package, the inspect commands) resolve through :func:`attributes` instead of
being imported with the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def attributes(
    package: str, modules: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``modules`` (name -> module,
    relative to ``package``); a resolved name is stored in ``namespace`` (the
    package's globals), so each is looked up once."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(modules))

    return __getattr__, __dir__
