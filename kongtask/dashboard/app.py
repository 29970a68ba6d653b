"""The dashboard as one ASGI application: its resources, its routes, how pages are rendered.

:class:`Dashboard` is what :func:`kongtask.dashboard.create_app` returns. It
works served by itself (``kongtask dashboard``, or any ASGI server) and
mounted inside another Starlette or FastAPI application. A mounted app gets
no lifespan events from its host, so everything it needs (the pool, the
throughput sampler) starts on the first request; served by itself the
lifespan starts it at once. Every URL it writes is relative to the path it
is mounted at (the ASGI ``root_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from ..client import WorkerUtils
from ..config import resolve_schema
from ..crontab import CronItem, as_cron_items
from ..db import DB_ERRORS, DB_OR_TIMEOUT_ERRORS, create_pool, resolve_dsn, scrub
from ..errors import ConfigError, SchemaError
from ..queries.dashboard import DashboardQueries
from . import formatting, states
from .rates import ThroughputHistory
from .security import CSRF_COOKIE, CsrfGuard, SecurityHeadersMiddleware

log = logging.getLogger("kongtask.dashboard")


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    """Settings of one dashboard; see :func:`kongtask.dashboard.create_app`."""

    schema: str
    read_only: bool = False
    refresh_seconds: float = 5.0
    dead_worker_timeout: float = 30.0
    exact_count_limit: int = 100_000
    sample_rows: int = 30_000
    page_size: int = 50
    query_timeout: float = 10.0
    throughput_interval: float = 5.0
    history_seconds: float = 600.0

    def __post_init__(self) -> None:
        positive = {
            "refresh_seconds": self.refresh_seconds,
            "dead_worker_timeout": self.dead_worker_timeout,
            "sample_rows": self.sample_rows,
            "page_size": self.page_size,
            "query_timeout": self.query_timeout,
            "throughput_interval": self.throughput_interval,
            "history_seconds": self.history_seconds,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"dashboard {name}: must be a positive number, got {value!r}")
        if self.page_size > 500:
            raise ConfigError(f"dashboard page_size: at most 500, got {self.page_size}")
        if isinstance(self.exact_count_limit, bool) or self.exact_count_limit < 0:
            raise ConfigError(
                f"dashboard exact_count_limit: must be >= 0, got {self.exact_count_limit!r}"
            )


class DatabaseUnavailable(Exception):
    """The database could not answer; the message is safe to show (no password)."""


class Dashboard:
    """The dashboard's ASGI application and what it holds (pool, sampler, secrets)."""

    def __init__(
        self,
        dsn_or_pool: str | asyncpg.Pool | None,
        options: DashboardOptions,
        *,
        crontab: str | Sequence[CronItem] | None = None,
        secret: bytes | str | None = None,
    ) -> None:
        if isinstance(dsn_or_pool, asyncpg.Connection):
            raise ConfigError(
                "dashboard: pass a DSN or an asyncpg.Pool; one Connection cannot serve "
                "concurrent requests"
            )
        self.options = options
        self.queries = DashboardQueries(options.schema)
        self.cron_items: list[CronItem] | None = (
            as_cron_items(crontab) if crontab is not None else None
        )
        self.csrf = CsrfGuard(secret)
        self.history = ThroughputHistory(options.history_seconds)
        self._pool: asyncpg.Pool | None = None
        self._dsn: str | None = None
        self._owns_pool = False
        if isinstance(dsn_or_pool, asyncpg.Pool):
            self._pool = dsn_or_pool
        else:
            self._dsn = resolve_dsn(dsn_or_pool)
            if self._dsn is None:
                raise ConfigError("dashboard: no DSN given and no DATABASE_URL or PG* variables")
        self.utils: WorkerUtils | None = None
        self.heartbeats = False
        self._started = False
        self._start_lock = asyncio.Lock()
        self._sampler: asyncio.Task[None] | None = None
        self.templates = _templates()
        from . import actions, pages  # they import this module for the types

        page = pages.Pages(self)
        act = actions.Actions(self)
        static = StaticFiles(packages=[("kongtask.dashboard", "static")])
        self.starlette = Starlette(
            routes=[
                Route("/", page.overview, name="overview"),
                Route("/jobs", page.jobs, name="jobs"),
                Route("/jobs/{job_id:int}", page.job, name="job"),
                Route("/job", page.find_job, name="find_job"),
                Route("/workers", page.workers, name="workers"),
                Route("/cron", page.cron, name="cron"),
                Route("/actions/jobs", act.jobs, methods=["POST"], name="job_actions"),
                Route("/actions/unlock", act.unlock, methods=["POST"], name="unlock"),
                Mount("/static", app=static, name="static"),
            ],
            exception_handlers={
                DatabaseUnavailable: self._database_error,
                ConnectionError: self._database_error,  # the pool could not open
                SchemaError: self._schema_error,
                HTTPException: self._http_error,
            },
            lifespan=self._lifespan,
        )
        self._app = SecurityHeadersMiddleware(self.starlette)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return f"<Dashboard schema={self.options.schema!r} read_only={self.options.read_only}>"

    # ------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.aclose()

    async def start(self) -> None:
        """Open the pool (when given a DSN), check the schema, start the sampler.

        Called by the lifespan when served alone, else by the first request;
        a failure is raised to that request and retried by the next.
        """
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._pool is None:
                self._pool = await create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=4,
                    server_settings={"application_name": "kongtask dashboard"},
                )
                self._owns_pool = True
            q = self.queries
            async with self.guarded():
                jobs, heartbeats = await self._pool.fetchrow(
                    q.installed, q.jobs_table, q.workers_table
                )
            if not jobs:
                raise SchemaError(
                    f"schema {self.options.schema!r} has no kongtask/graphile-worker tables: "
                    "install it with `kongtask migrate` (or point --schema at the right one)"
                )
            self.heartbeats = bool(heartbeats)
            self.utils = WorkerUtils(self._pool, schema=self.options.schema)
            self._sampler = asyncio.get_running_loop().create_task(
                self._sample_forever(), name="kongtask-dashboard-throughput"
            )
            self._started = True

    async def aclose(self) -> None:
        """Stop the sampler and close the pool if the dashboard opened it."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None
            self._owns_pool = False
        self._started = False

    async def _sample_forever(self) -> None:
        """Read the row counters every ``throughput_interval`` seconds, for the chart."""
        failing = False
        while True:
            try:
                row = await self.pool.fetchrow(
                    self.queries.table_stats,
                    self.queries.jobs_table,
                    timeout=self.options.query_timeout,
                )
            except DB_OR_TIMEOUT_ERRORS as exc:
                if not failing:
                    log.warning("throughput sampling failed: %s", scrub(str(exc), self._dsn))
                failing = True
            else:
                if failing:
                    log.info("throughput sampling recovered")
                failing = False
                self.history.add(row["now"], row["inserted"], row["deleted"])
            await asyncio.sleep(self.options.throughput_interval)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailable("the dashboard is not started")
        return self._pool

    # ------------------------------------------------------------- database
    @contextlib.asynccontextmanager
    async def guarded(self) -> AsyncIterator[None]:
        """Database failures and timeouts inside, as DatabaseUnavailable (an error page)."""
        try:
            yield
        except asyncio.TimeoutError:
            raise DatabaseUnavailable(
                f"the query took longer than {self.options.query_timeout:g} s; a filter "
                "that matches few jobs reads the whole table: add a task or a state"
            ) from None
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(scrub(str(exc), self._dsn)) from None

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows, within the dashboard's time limit."""
        await self.start()
        async with self.guarded():
            return await self.pool.fetch(sql, *args, timeout=self.options.query_timeout)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    def dead_after(self) -> list[float]:
        """The worker-liveness parameter, for statements that take one."""
        return [self.options.dead_worker_timeout] if self.heartbeats else []

    # ------------------------------------------------------------ rendering
    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        status_code: int = 200,
    ) -> Response:
        """A page (or a fragment), with the CSRF cookie set if the browser has none."""
        cookie = request.cookies.get(CSRF_COOKIE)
        new_cookie = None
        if not cookie:
            cookie = new_cookie = CsrfGuard.new_cookie_value()
        base = base_path(request)
        full = {
            "page": None,
            "notice": None,
            "base": base,
            "csrf_token": self.csrf.token_for(cookie),
            "options": self.options,
            "schema": self.options.schema,
            "read_only": self.options.read_only,
            "version": __version__,
            "state_labels": states.LABELS,
            "state_help": states.HELP,
            "state_order": states.DISPLAY_ORDER,
            "fragment_url": _fragment_url(request),
            **context,
        }
        response = self.templates.TemplateResponse(request, template, full, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        if new_cookie is not None:
            response.set_cookie(
                CSRF_COOKIE,
                new_cookie,
                path=base or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def error_page(self, request: Request, status_code: int, title: str, message: str) -> Response:
        if request.query_params.get("fragment"):
            return HTMLResponse(
                f'<p class="error">{markupsafe.escape(message)}</p>',
                status_code=status_code,
            )
        return self.render(
            request, "error.jinja", {"title": title, "message": message}, status_code
        )

    async def _database_error(self, request: Request, exc: Exception) -> Response:
        return self.error_page(request, 503, "The database did not answer", str(exc))

    async def _schema_error(self, request: Request, exc: Exception) -> Response:
        return self.error_page(request, 503, "The schema is not installed", str(exc))

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 405: "Method not allowed"}
        return self.error_page(
            request,
            exc.status_code,
            titles.get(exc.status_code, "Refused"),
            str(exc.detail),
        )


def base_path(request: Request) -> str:
    """Where the dashboard is mounted ("" at the root); every link starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _fragment_url(request: Request) -> str:
    """This page's URL asking for just its live part (the refresh script's target)."""
    params = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k != "fragment" and not k.startswith("notice")
    ]
    params.append(("fragment", "1"))
    return f"{request.url.path}?{urlencode(params)}"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kongtask.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(formatting.FILTERS)
    env.globals["urlencode"] = urlencode
    return Jinja2Templates(env=env)


def make_options(schema: str | None = None, **settings: Any) -> DashboardOptions:
    """Options with the schema resolved the usual way (argument, environment, default)."""
    return DashboardOptions(schema=resolve_schema(schema), **settings)
