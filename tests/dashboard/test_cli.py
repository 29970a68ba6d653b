"""``kongtask dashboard`` as a real process: it serves, stops cleanly on SIGTERM, and
answers bad input with one line and the documented exit code."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from kongtask import WorkerUtils

from ..conftest import spawn_kongtask


@asynccontextmanager
async def dashboard_process(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[str]:
    """``kongtask dashboard --port 0 ARGS``; yields the URL it prints, stops it with SIGTERM."""
    process = await spawn_kongtask("dashboard", "--port", "0", *args, env=env)
    assert process.stderr is not None
    url = None
    lines: list[str] = []
    try:
        while url is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            if not line:
                raise AssertionError(f"dashboard exited: {''.join(lines)}")
            lines.append(line)
            match = re.search(r"dashboard on (http://\S+)", line)
            url = match.group(1) if match else None
        yield url
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        rest = (await process.stderr.read()).decode()
        assert "dashboard stopped" in rest and "Traceback" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serves_under_a_base_path_and_stops_cleanly(
    database_url: str, schema: str, utils: WorkerUtils
) -> None:
    job = await utils.add_job("report", {})
    async with (
        dashboard_process("-c", database_url, "-s", schema, "--base-path", "/jobs/") as url,
        httpx.AsyncClient() as client,
    ):
        assert url.endswith("/jobs/")
        root = url[: -len("jobs/")]
        redirect = await client.get(root)
        assert redirect.status_code == 307 and redirect.headers["location"] == "/jobs/"
        page = await client.get(url + f"jobs/{job.id}")
        assert page.status_code == 200 and "report" in page.text
        assert 'href="/jobs/jobs?task=report"' in page.text


async def test_auth_from_the_environment(
    database_url: str, schema: str, utils: WorkerUtils
) -> None:
    env = {"KONGTASK_DASHBOARD_AUTH": "basic:ops:correct horse"}
    async with (
        dashboard_process("-c", database_url, "-s", schema, "--read-only", env=env) as url,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(url)).status_code == 401
        assert (await client.get(url, auth=("ops", "correct horse"))).status_code == 200
        refused = await client.post(url + "actions/jobs", auth=("ops", "correct horse"))
        assert refused.status_code == 403 and "read-only" in refused.text


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--base-path", "/a b"], 2, "--base-path: '/a b' is not a plain URL path"),
        (["--auth", "basic:nopassword"], 2, "--auth: expected basic:USER:PASSWORD"),
        (["--port", "70000"], 2, "a port number must be 0-65535, got 70000"),
        (["--refresh", "0"], 2, "a number of seconds must be 0.001-86400, got 0"),
        (["-s", "kt_not_installed"], 2, "schema 'kt_not_installed' has no kongtask"),
        (["--crontab", "/nonexistent/crontab"], 2, "--crontab: cannot read /nonexistent/crontab"),
        ([], 2, "cannot listen on 127.0.0.1:"),
    ],
)
async def test_bad_input_is_one_line_and_an_exit_code(
    database_url: str, schema: str, utils: WorkerUtils, args: list[str], code: int, says: str
) -> None:
    busy = _busy_port()
    try:
        port = str(busy.getsockname()[1])
        process = await spawn_kongtask(
            "dashboard", "-c", database_url, "-s", schema, "--port", port, *args
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        busy.close()
    text = err.decode()
    assert process.returncode == code, text
    assert "Traceback" not in text
    # One line saying what was wrong (argparse puts its usage lines before it).
    assert says in text.strip().splitlines()[-1]
    if "usage:" not in text:
        assert len(text.strip().splitlines()) == 1, text


async def test_an_unreachable_database_is_exit_code_3(schema: str) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    process = await spawn_kongtask(
        "dashboard", "-c", f"postgresql://someone:hunter2@127.0.0.1:{port}/db", "--port", "0"
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 3
    assert "cannot connect" in err.decode() and "hunter2" not in err.decode()
