"""``kongtask dashboard``: the dashboard served by itself, with uvicorn.

Binds 127.0.0.1 unless told otherwise; ``--auth`` (or the
``KONGTASK_DASHBOARD_AUTH`` variable, which other users cannot read from the
process list) puts Basic or bearer auth in front of every request. The
database is reached and the schema checked before the port opens, so a
wrong DSN or schema is one line and an exit code, not a page of errors.

``cli`` imports this module for every command, so nothing here imports the
web stack until the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SchemaError

log = logging.getLogger("kongtask.dashboard")

AUTH_VARIABLE = "KONGTASK_DASHBOARD_AUTH"
_BASE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _bounded(convert: Callable[[str], float], what: str, low: float, high: float) -> Any:
    """An argparse type: ``convert`` of the text, within [low, high], or one clear line."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low:g}-{high:g}, got {text}")
        return value

    return parse


_port = _bounded(int, "a port number", 0, 65535)
#: Seconds: more than a millisecond, less than a day.
_seconds = _bounded(float, "a number of seconds", 0.001, 86400)


def normalise_base_path(text: str) -> str:
    """``/jobs`` from ``/jobs``, ``/jobs/`` or ``jobs``; ``""`` for the root."""
    path = "/" + text.strip().strip("/")
    if path == "/":
        return ""
    if not _BASE_PATH.fullmatch(path):
        raise ConfigError(
            f"--base-path: {text!r} is not a plain URL path (letters, digits, . _ ~ - between /)"
        )
    return path


def register(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_connection_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``dashboard`` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard (needs kongtask[dashboard])",
        description="Serve the web dashboard: queue depth per task and queue, jobs with "
        "filters, failures, workers, cron; retry, reschedule, remove and fail jobs. "
        "Listens on 127.0.0.1 by default.",
    )
    add_connection_args(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=_port, default=8080, help="default 8080; 0 picks one")
    parser.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    parser.add_argument(
        "--base-path", default="", metavar="PATH", help="serve under this path, e.g. /jobs"
    )
    parser.add_argument(
        "--auth",
        metavar="SPEC",
        help="basic:USER:PASSWORD or bearer:TOKEN, required on every request (prefer the "
        f"{AUTH_VARIABLE} variable: a command line is visible to every user)",
    )
    parser.add_argument(
        "--crontab",
        metavar="FILE",
        help="the workers' crontab, to show next ticks (default: ./crontab if it exists)",
    )
    parser.add_argument(
        "--refresh",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds between live refreshes of open pages (default 5)",
    )
    parser.add_argument(
        "--dead-worker-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="heartbeat silence after which a worker is shown dead (default 30, as the pools)",
    )


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not (exit code 2)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket, path: str) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}/"


async def run(args: argparse.Namespace, dsn: str) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    from . import create_app, require_web_stack

    require_web_stack()
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route

    from ..crontab import load_crontab
    from .security import AuthMiddleware, Credentials

    path = normalise_base_path(args.base_path)
    auth_spec = args.auth or os.environ.get(AUTH_VARIABLE)
    credentials = Credentials.parse(auth_spec) if auth_spec else None
    crontab_file = args.crontab or ("crontab" if Path("crontab").is_file() else None)
    try:
        crontab = load_crontab(crontab_file) if crontab_file else None
    except OSError as exc:
        raise ConfigError(f"--crontab: cannot read {crontab_file}: {exc.strerror}") from None
    dashboard = create_app(
        dsn,
        schema=args.schema,
        read_only=args.read_only,
        crontab=crontab,
        refresh_seconds=args.refresh,
        dead_worker_timeout=args.dead_worker_timeout,
    )
    try:
        await dashboard.start()
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    try:
        app: Any = dashboard
        if path:

            async def home(request: Any) -> Any:
                return RedirectResponse(path + "/", status_code=307)

            app = Starlette(routes=[Route("/", home), Mount(path, app=dashboard)])
        if credentials is not None:
            app = AuthMiddleware(app, credentials)
        sock = _listen(args.host, args.port)
        if credentials is None and args.host not in _LOOPBACK:
            log.warning(
                "listening on %s without --auth: anyone who can reach this port can %s",
                args.host,
                "read every payload" if args.read_only else "retry, fail and remove jobs",
            )
        config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False
        )
        log.info(
            "dashboard on %s (schema %r%s)",
            _url(sock, path),
            dashboard.options.schema,
            ", read-only" if args.read_only else "",
        )
        await _server_class(uvicorn)(config).serve(sockets=[sock])
    finally:
        await dashboard.aclose()
    log.info("dashboard stopped")
    return 0


def _server_class(uvicorn: Any) -> Any:
    """uvicorn's server, made to return after a graceful stop on SIGINT or SIGTERM.

    uvicorn re-raises the signal once it has shut down, which kills the
    process before the dashboard's pool is closed and makes a requested stop
    exit with a signal's status; a service manager asking it to stop should
    see it exit 0.
    """

    class Server(uvicorn.Server):  # type: ignore[misc, name-defined]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server
