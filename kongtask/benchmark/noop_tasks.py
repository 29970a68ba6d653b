"""The tasks of the drain-from-spawn scenario, for ``kongtask run --tasks`` (this module).

One async task, ``bench_noop``, that does nothing a user's task would notice:
it adds the payload's ``i`` to a count and a sum, so that at exit the module
can print ``{"handled": n, "sum": s, ...}`` as the last stdout line. With
payloads ``1..N`` that proves every job ran and none twice, without touching
the database or the worker: the pool under test is the plain ``kongtask run``
with its defaults, as a user starts it.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

import orjson

from kongtask import Helpers, TaskList, __version__
from kongtask._core import IMPLEMENTATION

from .common import TASK

tasks = TaskList()
_seen = {"handled": 0, "sum": 0}


async def bench_noop(payload: Any, helpers: Helpers) -> None:
    _seen["handled"] += 1
    _seen["sum"] += payload["i"]


tasks.add(TASK, bench_noop)


@atexit.register
def _report() -> None:
    result = {**_seen, "impl": IMPLEMENTATION, "engine": "kongtask", "version": __version__}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
