"""The dashboard in a real browser (the system's headless chromium, driven by Playwright):
every page, filters and pages, retry and remove with the database checked, the
refusals, an XSS payload, live refresh, and the screenshots docs/ shows."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

import kongtask
from kongtask import JobSpec, WorkerUtils
from kongtask.db import quote_ident

from .conftest import in_ci
from .support import add_counted, heartbeat, job_row, served, shape_job, until

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture says why; CI must have it
    if in_ci():
        raise
    pytest.skip(
        "playwright is missing: pip install -e '.[test,dashboard]'", allow_module_level=True
    )

pytestmark = pytest.mark.browser

CHECKOUT = Path(__file__).resolve().parents[2]
#: Where test_screenshots writes its pictures: a temporary folder, so a test run
#: leaves the checkout as it found it; ``KONGTASK_SCREENSHOTS=docs`` (a path,
#: relative to the checkout) refreshes the ones docs/ shows.
SCREENSHOTS_ENV = "KONGTASK_SCREENSHOTS"


@pytest.fixture
async def site(make_dashboard: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """``site(**options)``: a dashboard served on a free port; yields its URL."""
    stack: list[Any] = []

    async def start(**options: Any) -> str:
        context = served(make_dashboard(**options))
        stack.append(context)
        return await context.__aenter__()

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def _page(browser: Any) -> tuple[Any, list[str]]:
    """A new tab, and a list that collects its script errors, console errors and dialogs."""
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )

    async def on_dialog(dialog: Any) -> None:
        if dialog.type == "confirm":  # the dashboard's own "are you sure?"
            await dialog.accept()
        else:
            problems.append(f"{dialog.type} dialog: {dialog.message}")
            await dialog.dismiss()

    page.on("dialog", on_dialog)
    return page, problems


async def _ids_on_page(page: Any) -> list[int]:
    return [
        int(v)
        for v in await page.locator("table input[name=id]").evaluate_all(
            "boxes => boxes.map(b => b.value)"
        )
    ]


async def test_every_page_loads(
    browser: Any, site: Any, utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    failed, running, _ = await utils.add_jobs(
        [JobSpec("mail", {"to": "a@b.c"}), JobSpec("sms", {}), JobSpec("mail", {}, queue_name="q")]
    )
    await shape_job(conn, schema, failed.id, attempts=25, last_error="SMTPError: refused")
    await heartbeat(conn, schema, "pool-1")
    await shape_job(conn, schema, running.id, attempts=1, locked_at="0 s", locked_by="pool-1")
    url = await site(crontab="0 4 * * * mail")
    page, problems = await _page(browser)
    for path, heading in [
        ("/", "By task"),
        ("/jobs", "Jobs"),
        (f"/jobs/{failed.id}", f"Job #{failed.id}"),
        ("/workers", "Workers"),
        ("/cron", "Cron"),
    ]:
        response = await page.goto(url + path)
        assert response.status == 200, path
        await page.get_by_role("heading", name=heading).first.wait_for()
    await page.goto(url + f"/jobs/{failed.id}")
    assert "SMTPError: refused" in await page.locator("pre.error-text").inner_text()
    # The live indicator says the page refreshes itself.
    await page.locator("#live[data-state=ok]").wait_for()
    assert problems == []


async def test_filter_and_paginate(
    browser: Any, site: Any, utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    await utils.add_jobs([JobSpec("alpha" if n % 3 else "beta", {"n": n}) for n in range(130)])
    alpha = [
        r["id"]
        for r in await conn.fetch(
            f"select j.id from {quote_ident(schema)}._private_jobs j "
            f"join {quote_ident(schema)}._private_tasks t on t.id = j.task_id "
            "where t.identifier = 'alpha' order by j.id desc"
        )
    ]
    url = await site()
    page, problems = await _page(browser)
    await page.goto(url + "/jobs")
    await page.select_option("select[name=task]", "alpha")
    await page.select_option("select[name=state]", "available")
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_url(re.compile(r"task=alpha&state=available"))
    first = await _ids_on_page(page)
    assert first == alpha[:50]
    await page.get_by_role("link", name="older →").click()
    await page.wait_for_url(re.compile(r"after="))
    assert await _ids_on_page(page) == alpha[50:]
    assert await page.get_by_role("link", name="older →").count() == 0
    await page.get_by_role("link", name="← newer").click()
    await page.wait_for_url(re.compile(r"before="))
    assert await _ids_on_page(page) == first
    assert problems == []


async def test_retry_and_remove_selected_jobs(
    browser: Any, site: Any, utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    jobs = [j.id for j in await utils.add_jobs([JobSpec("t", {"n": n}) for n in range(5)])]
    for job_id in jobs[:3]:
        await shape_job(conn, schema, job_id, attempts=25, last_error="boom")
    await heartbeat(conn, schema, "pool-1")
    await shape_job(conn, schema, jobs[4], attempts=1, locked_at="0 s", locked_by="pool-1")
    url = await site()
    page, problems = await _page(browser)

    await page.goto(url + "/jobs?state=failed")
    await page.check(f"table input[name=id][value='{jobs[0]}']")
    await page.check(f"table input[name=id][value='{jobs[1]}']")
    await page.get_by_text("(2 selected)").wait_for()
    await page.get_by_role("button", name="Retry now").click()
    await page.get_by_text("Retried 2 jobs.").wait_for()
    assert "notice" not in page.url  # the outcome stays out of reloads
    for job_id in jobs[:2]:
        row = await job_row(conn, schema, job_id)
        assert row["attempts"] == 0
    assert (await job_row(conn, schema, jobs[2]))["attempts"] == 25
    assert await _ids_on_page(page) == [jobs[2]]  # back on the filtered list

    await page.goto(url + "/jobs")
    await page.check(f"table input[name=id][value='{jobs[3]}']")
    await page.check(f"table input[name=id][value='{jobs[4]}']")
    await page.get_by_role("button", name="Remove").click()  # the confirm dialog is accepted
    await page.get_by_text("Removed 1 job.").wait_for()
    await page.get_by_text(f"#{jobs[4]}").first.wait_for()
    assert "running on pool-1" in await page.locator("#notice").inner_text()
    assert await job_row(conn, schema, jobs[3]) is None
    assert await job_row(conn, schema, jobs[4]) is not None
    assert problems == []


async def test_refusals(
    browser: Any, site: Any, utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    job = await utils.add_job("t", {})
    url = await site()
    page, _ = await _page(browser)
    await page.goto(url + "/jobs")  # the browser now has the dashboard's cookie

    # A POST without the form's token, with the browser's cookies.
    bare = await page.request.post(
        url + "/actions/jobs", form={"action": "remove", "id": str(job.id)}
    )
    assert bare.status == 403 and "security token" in await bare.text()

    # A form on another site, submitted by the same browser.
    async def evil(request: Any) -> HTMLResponse:
        return HTMLResponse(
            f'<form id="f" method="post" action="{url}/actions/jobs">'
            f'<input name="action" value="remove"><input name="id" value="{job.id}"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )

    async with served(Starlette(routes=[Route("/", evil)])) as evil_url:
        await page.goto(evil_url.replace("127.0.0.1", "localhost") + "/")
        await page.wait_for_url(url + "/actions/jobs")
        assert "Refused" in await page.locator("main").inner_text()
    assert await job_row(conn, schema, job.id) is not None

    # Read-only: no buttons, and a POST is refused for that reason.
    read_only = await site(read_only=True)
    await page.goto(read_only + "/jobs")
    assert await page.get_by_role("button", name="Remove").count() == 0
    assert await page.locator("table input[name=id]").count() == 0
    refused = await page.request.post(
        read_only + "/actions/jobs", form={"action": "remove", "id": str(job.id)}
    )
    assert refused.status == 403 and "read-only" in await refused.text()
    assert await job_row(conn, schema, job.id) is not None


async def test_an_xss_payload_shows_as_text(
    browser: Any, site: Any, utils: WorkerUtils, conn: asyncpg.Connection, schema: str
) -> None:
    task = "<img src=x onerror=alert('task')>"
    payload = {"note": "</pre><script>alert('payload')</script>"}
    error = "<script>alert('error')</script>\n<svg onload=alert('svg')>"
    job = await utils.add_job(task, payload, job_key="<b>key</b>", queue_name="<i>q</i>")
    await shape_job(conn, schema, job.id, attempts=25, last_error=error)
    url = await site()
    page, problems = await _page(browser)
    for path in ("/", "/jobs", f"/jobs/{job.id}"):
        await page.goto(url + path)
        # Let the live refresh swap the fragment in at least once (innerHTML).
        await page.locator("#live-text").filter(has_text="UTC").wait_for()
        assert await page.locator("main img, main svg:not(.chart svg), main b, main i").count() == 0
        assert await page.locator("script").count() == 1  # the dashboard's own
    assert await page.locator("pre.error-text").inner_text() == error
    assert (
        "</pre><script>alert('payload')</script>" in await page.locator("pre.payload").inner_text()
    )
    assert task in await page.locator(".page-head").inner_text()
    assert problems == []


async def test_live_refresh_without_reload(browser: Any, site: Any, utils: WorkerUtils) -> None:
    url = await site()
    page, problems = await _page(browser)
    await page.goto(url + "/")
    total = page.locator(".stat", has_text="jobs in the queue").locator(".value")
    assert await total.inner_text() == "0"
    await page.evaluate("window.notReloaded = true")
    await utils.add_jobs([JobSpec("t", {})] * 7)
    await expect(total).to_have_text("7", timeout=15_000)
    assert await page.evaluate("window.notReloaded") is True
    assert problems == []


# ----------------------------------------------------------------- screenshots
def _tasks() -> kongtask.TaskList:
    """A small, plausible application: most jobs succeed, some fail and retry."""
    tasks = kongtask.TaskList()
    rng = random.Random(7)

    async def send_email(payload: Any, helpers: Any) -> None:
        await asyncio.sleep(rng.uniform(0.001, 0.01))

    async def resize_image(payload: Any, helpers: Any) -> None:
        await asyncio.sleep(rng.uniform(0.002, 0.02))

    async def sync_crm(payload: Any, helpers: Any) -> None:
        await asyncio.sleep(0.01)
        if rng.random() < 0.3:
            raise ConnectionError("crm.internal:443 timed out after 10 s")

    async def render_invoice(payload: Any, helpers: Any) -> None:
        await asyncio.sleep(60)  # still running when the screenshot is taken

    async def charge_card(payload: Any, helpers: Any) -> None:
        if payload.get("card", "").endswith("0002"):
            raise RuntimeError("PaymentGatewayError: card_declined (insufficient_funds)")

    tasks.add("send_email", send_email)
    tasks.add("resize_image", resize_image)
    tasks.add("sync_crm_contact", sync_crm)
    tasks.add("charge_card", charge_card)
    tasks.add("render_invoice_pdf", render_invoice)
    return tasks


async def test_screenshots(
    browser: Any,
    site: Any,
    database_url: str,
    utils: WorkerUtils,
    conn: asyncpg.Connection,
    schema: str,
    tmp_path: Path,
) -> None:
    """dashboard-overview.png and dashboard-failed-job.png, from a live queue: into
    a temporary folder, or where ``KONGTASK_SCREENSHOTS`` says (``docs`` for the
    pictures docs/dashboard.md and the README show)."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    out = CHECKOUT / chosen if chosen else tmp_path
    # A backlog no pool here handles (added before the chart starts, which shows traffic).
    await add_counted(conn, schema, [JobSpec("export_csv", {"account": n}) for n in range(1200)])
    url = await site(
        throughput_interval=0.5, history_seconds=30, crontab="0 4 * * * nightly_report"
    )
    # A card that is declined, a scheduled report.
    later = [JobSpec("nightly_report", {"day": d}, run_at=None) for d in range(3)]
    for job in await utils.add_jobs(later):
        await shape_job(conn, schema, job.id, run_at="6 hours")
    await conn.execute(
        f"insert into {quote_ident(schema)}._private_known_crontabs values "
        "('nightly_report', now() - interval '3 days', date_trunc('day', now()) + interval '4 h'"
        " - case when now() < date_trunc('day', now()) + interval '4 h'"
        " then interval '1 day' else interval '0' end)"
    )
    charge = await utils.add_job(
        "charge_card",
        {
            "invoice": "INV-2024-0193",
            "customer": 48213,
            "card": "4000 0000 0000 0002",
            "amount": {"value": 4900, "currency": "EUR"},
        },
        queue_name="billing",
        max_attempts=3,
    )
    runner = await kongtask.run(
        database_url, _tasks(), schema=schema, concurrency=8, poll_interval=0.2
    )
    try:
        page, problems = await _page(browser)
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.goto(url + "/")
        # Traffic in waves for about 25 seconds, so the chart has a shape to draw.
        for wave in range(10):
            specs = [
                JobSpec("send_email", {"to": f"user{wave}-{n}@example.com"})
                for n in range(150 + 120 * (wave % 4))
            ]
            specs += [JobSpec("resize_image", {"image": n}) for n in range(60)]
            specs += [
                JobSpec("sync_crm_contact", {"contact": n}, queue_name="crm") for n in range(8)
            ]
            await utils.add_jobs(specs)
            await asyncio.sleep(2.5)
        # The charge failed three times meanwhile (backoff 3 s, then 7 s): failed for good.
        await until(lambda: _failed(conn, schema, charge.id), "the charge to fail for good")
        await utils.add_jobs([JobSpec("render_invoice_pdf", {"invoice": n}) for n in range(3)])
        running = (
            f"select count(*) = 3 from {quote_ident(schema)}._private_jobs "
            "where locked_at is not null"
        )
        await until(lambda: conn.fetchval(running), "the three invoices to be claimed")
        await page.goto(url + "/")
        await page.locator("polyline.finished").wait_for()
        out.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(out / "dashboard-overview.png"), full_page=True)
        await page.goto(url + f"/jobs/{charge.id}")
        await page.get_by_text("PaymentGatewayError").first.wait_for()
        await page.screenshot(path=str(out / "dashboard-failed-job.png"), full_page=True)
        assert problems == []
    finally:
        await runner.kill()  # the invoices would take a minute
    for name in ("dashboard-overview.png", "dashboard-failed-job.png"):
        assert (out / name).stat().st_size > 10_000


async def _failed(conn: asyncpg.Connection, schema: str, job_id: int) -> bool:
    row = await job_row(conn, schema, job_id)
    return row is not None and row["attempts"] >= row["max_attempts"] and row["locked_at"] is None
