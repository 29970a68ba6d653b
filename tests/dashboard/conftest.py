"""Fixtures of the dashboard tests: the app on a fresh schema, an HTTP client, a browser.

The web stack (the ``dashboard`` extra), httpx and Playwright come with the
test install (``pip install -e ".[test,dashboard]"``); the browser is the
system's chromium (``apt-get install chromium``), never a downloaded one.
Locally a missing piece skips these tests with the reason; under ``CI=true``
it fails them, so CI cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from typing import Any

import pytest

from kongtask import WorkerUtils

from .support import Queue

#: Launch flags for chromium running as root in a container: no sandbox, no GPU,
#: nothing that talks to the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(problem: str) -> None:
    if in_ci():
        pytest.fail(f"dashboard tests must run in CI: {problem}", pytrace=False)
    pytest.skip(problem)


@cache
def _stack_problem() -> str | None:
    needed = (
        ("starlette",),
        ("jinja2",),
        ("uvicorn",),
        ("python_multipart", "multipart"),
        ("httpx",),
    )
    for names in needed:
        if not any(importlib.util.find_spec(name) for name in names):
            return f"{names[0]} is missing: pip install -e '.[test,dashboard]'"
    return None


@cache
def chromium_path() -> str | None:
    path = os.environ.get("KONGTASK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(autouse=True)
def _require_web_stack() -> None:
    problem = _stack_problem()
    if problem:
        _missing(problem)


@pytest.fixture
async def closers() -> AsyncIterator[list[Callable[[], Awaitable[None]]]]:
    """Async close functions, called last-first when the test ends."""
    pending: list[Callable[[], Awaitable[None]]] = []
    yield pending
    for close in reversed(pending):
        await close()


@pytest.fixture
def make_dashboard(
    database_url: str, schema: str, utils: WorkerUtils, closers: list[Any]
) -> Callable[..., Any]:
    """Dashboards on the test's migrated schema (fast refresh); closed afterwards."""
    from kongtask.dashboard import create_app

    def make(**options: Any) -> Any:
        options.setdefault("refresh_seconds", 0.5)
        app = create_app(database_url, schema=schema, **options)
        closers.append(app.aclose)
        return app

    return make


@pytest.fixture
def queue(utils: WorkerUtils, conn: Any, schema: str) -> Queue:
    return Queue(utils, conn, schema)


@pytest.fixture
def dashboard(make_dashboard: Callable[..., Any]) -> Any:
    return make_dashboard()


@pytest.fixture
def client_for(closers: list[Any]) -> Callable[..., Any]:
    """httpx clients talking to an ASGI app directly (no server, no lifespan: as mounted)."""
    import httpx

    def make(app: Any) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://dashboard.test"
        )
        closers.append(client.aclose)
        return client

    return make


@pytest.fixture
def client(client_for: Callable[..., Any], dashboard: Any) -> Any:
    return client_for(dashboard)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless chromium context with a fresh profile; fails in CI when there is none."""
    path = chromium_path()
    if path is None:
        _missing("chromium is not installed (apt-get install -y chromium chromium-driver)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is missing: pip install -e '.[test,dashboard]'")
    async with async_playwright() as playwright:
        with tempfile.TemporaryDirectory(prefix="kongtask-chromium-") as profile:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=path,
                headless=True,
                args=list(CHROMIUM_FLAGS),
                viewport={"width": 1280, "height": 900},
                timezone_id="UTC",
                locale="en-GB",
            )
            try:
                yield context
            finally:
                await context.close()
