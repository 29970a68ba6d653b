"""A small typed event emitter using graphile-worker's event names.

Listeners may be plain functions or coroutine functions. A listener that
raises is logged and forgotten: observability must never break the pool.
Emitting an event nobody listens to costs one dict lookup, because several
events fire once per job.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

Listener = Callable[[dict[str, Any]], Awaitable[None] | None]

log = logging.getLogger("kongtask.events")

#: Every event kongtask emits (graphile-worker's names, plus kongtask's own).
EVENT_NAMES = frozenset(
    {
        "pool:create",
        "pool:listen:connecting",
        "pool:listen:success",
        "pool:listen:error",
        "pool:release",
        "pool:gracefulShutdown",
        "pool:gracefulShutdown:error",
        "pool:gracefulShutdown:complete",
        "pool:forcefulShutdown",
        "pool:forcefulShutdown:error",
        "pool:forcefulShutdown:complete",
        "worker:create",
        "worker:release",
        "worker:stop",
        "worker:getJob:start",
        "worker:getJob:error",
        "worker:getJob:empty",
        "worker:fatalError",
        "job:start",
        "job:success",
        "job:error",
        "job:failed",
        "job:complete",
        "localQueue:init",
        "localQueue:getJobs:complete",
        "localQueue:returnJobs",
        "cron:starting",
        "cron:started",
        "cron:schedule",
        "cron:backfill",
        "cron:prematureTimer",
        "cron:overdueTimer",
        "resetLocked:started",
        "resetLocked:success",
        "resetLocked:failure",
        "stop",
    }
)


class EventEmitter:
    """Maps event names to listeners; ``emit`` never raises."""

    __slots__ = ("_listeners", "_tasks")

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def on(self, name: str, listener: Listener) -> Listener:
        """Register ``listener`` for ``name``; unknown names raise to catch typos."""
        if name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}; known events: {sorted(EVENT_NAMES)}")
        self._listeners.setdefault(name, []).append(listener)
        return listener

    def off(self, name: str, listener: Listener) -> None:
        """Remove a listener registered with :meth:`on`."""
        listeners = self._listeners.get(name)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._listeners[name]

    @property
    def listeners(self) -> dict[str, list[Listener]]:
        """The live mapping of event names to listeners (for hot paths that
        test membership themselves); modify it only through :meth:`on`/:meth:`off`."""
        return self._listeners

    def has(self, name: str) -> bool:
        """Whether anybody listens; lets hot paths skip building the payload."""
        return name in self._listeners

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        """Call every listener of ``name``; coroutines run as tasks."""
        listeners = self._listeners.get(name)
        if not listeners:
            return
        for listener in tuple(listeners):
            try:
                result = listener(payload)
            except Exception:
                log.exception("listener for %r raised; ignoring", name)
                continue
            if result is not None and inspect.isawaitable(result):
                task = asyncio.ensure_future(self._guard(name, result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(name: str, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("async listener for %r raised; ignoring", name)
