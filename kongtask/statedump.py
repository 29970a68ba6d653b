"""A running pool's state, written to its log on ``SIGUSR1``.

A worker that stops making progress without failing (a lock it waits on, a
wake-up nobody sends) shows nothing in its log, and a native stack of an
asyncio process only shows the loop waiting. What tells the cause is the
pool's own state and where each of its coroutines is suspended, so
``kill -USR1 <pid>`` writes both, as Sidekiq's ``TTIN`` does for threads, and
the worker carries on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

#: Frames kept per coroutine (innermost last), enough to see what it awaits.
_FRAMES = 6


def task_stacks(tasks: Iterable[asyncio.Task[Any]]) -> list[str]:
    """One block per distinct place where unfinished tasks are suspended (file,
    line, function; compiled frames may have no line), with the tasks there:
    a pool's slots wait in one place, and fifty copies would hide the rest."""
    places: dict[tuple[str, ...], list[str]] = {}
    for task in tasks:
        if task.done():
            continue
        stack = tuple(
            f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            for frame in task.get_stack(limit=_FRAMES)
        )
        places.setdefault(stack, []).append(task.get_name())
    blocks = []
    for stack, names in sorted(places.items(), key=lambda item: sorted(item[1])):
        who = names[0] if len(names) == 1 else f"{len(names)} tasks ({', '.join(sorted(names))})"
        blocks.append("\n".join([f"  {who}:", *stack]))
    return blocks


def render(worker_id: str, parts: Mapping[str, Any], tasks: Iterable[asyncio.Task[Any]]) -> str:
    """The report: ``parts`` as ``name: value`` lines, then every task's stack."""
    lines = [f"state of worker {worker_id}:"]
    lines += [f"  {name}: {value}" for name, value in parts.items()]
    lines += task_stacks(tasks)
    return "\n".join(lines)


__all__ = ["render", "task_stacks"]
