"""The dashboard over HTTP (httpx straight into the ASGI app, as when mounted):
pages, actions and their semantics, and every refusal."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import markupsafe
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from kongtask import JobSpec
from kongtask.dashboard.security import CSRF_COOKIE, CsrfGuard
from kongtask.db import quote_ident
from kongtask.errors import ConfigError

from .support import Queue, add_counted, csrf_token


async def _token(client: Any, path: str = "/jobs") -> str:
    """A fresh CSRF token (the page also sets the browser's cookie)."""
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return csrf_token(response.text)


async def _post(client: Any, path: str, data: dict[str, Any], **headers: str) -> Any:
    return await client.post(path, data=data, headers=headers)


async def _held(
    queue: Queue,
) -> dict[str, int]:
    """Four jobs: one free, and one held by each of a live worker (``alive-1``), a dead
    one (``dead-1``, silent 10 min) and one that keeps no heartbeat (``node-pool``)."""
    ids = [j.id for j in await queue.utils.add_jobs([JobSpec("t", {})] * 4)]
    await queue.heartbeat("alive-1")
    await queue.heartbeat("dead-1", silent="10 min")
    for job_id, worker, since in zip(
        ids[1:], ("alive-1", "dead-1", "node-pool"), ("0 s", "-10 min", "-1 min"), strict=True
    ):
        await queue.shape(job_id, attempts=1, locked_at=since, locked_by=worker)
    return dict(zip(("free", "live", "dead", "unknown"), ids, strict=True))


# ---------------------------------------------------------------------- pages
async def test_every_page_renders(client: Any, queue: Queue) -> None:
    job = await queue.utils.add_job("send_email", {"to": "a@b.c"}, queue_name="mail")
    await queue.heartbeat("worker-live")
    for path, expect in [
        ("/", "By task"),
        ("/jobs", f"#{job.id}"),
        (f"/jobs/{job.id}", "a@b.c"),
        ("/workers", "worker-live"),
        ("/cron", "No cron items"),
    ]:
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert expect in response.text, path
        assert "<html" in response.text
        fragment = await client.get(path + ("&" if "?" in path else "?") + "fragment=1")
        assert fragment.status_code == 200
        assert "<html" not in fragment.text and expect in fragment.text, path


async def test_overview_counts_by_task_and_queue(client: Any, queue: Queue) -> None:
    jobs = await queue.utils.add_jobs(
        [JobSpec("mail", {}, queue_name="q")] * 3 + [JobSpec("sms", {})] * 2
    )
    await queue.shape(jobs[0].id, attempts=25, last_error="dead")
    page = (await client.get("/")).text
    row = re.search(r'jobs\?task=mail">mail</a></th>(.*?)</tr>', page, re.S)
    assert row is not None
    cells = re.findall(r'<td class="num[^"]*">\s*(?:<a[^>]*>)?([^<]*)', row.group(1))
    # available, scheduled, running, retrying, failed for good, oldest waiting, total
    assert [c.strip() for c in cells[:5]] == ["2", "0", "0", "0", "1"]
    assert cells[-1].strip() == "3"
    assert "Exact counts." in page and "≈" not in page


async def test_overview_estimates_from_a_sample_above_the_limit(
    make_dashboard: Any, client_for: Any, queue: Queue
) -> None:
    # The overview picks exact or sampled from PostgreSQL's row estimate.
    await add_counted(queue.conn, queue.schema, [JobSpec("mail", {})] * 40)
    client = client_for(make_dashboard(exact_count_limit=10, sample_rows=1_000_000))
    page = (await client.get("/")).text
    assert "≈" in page and "block sample" in page
    exact = (await client.get("/?exact=1")).text
    assert "Exact counts, read at" in exact and "data-refresh=" not in exact
    assert re.search(r'jobs\?task=mail&amp;state=available">40<', exact)


async def test_job_page_shows_everything_escaped(client: Any, queue: Queue) -> None:
    hostile = "<script>alert('x')</script>"
    job = await queue.utils.add_job(
        hostile, {"html": hostile, "n": 12345678901234567890}, job_key=hostile, flags=["<b>"]
    )
    error = f'<img src=x onerror="alert(1)">\n  {hostile}'
    await queue.shape(job.id, attempts=25, last_error=error)
    for path in (f"/jobs/{job.id}", "/jobs", "/", f"/jobs?task={hostile}"):
        text = (await client.get(path)).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert "<b>" not in text, path
    page = (await client.get(f"/jobs/{job.id}")).text
    assert str(markupsafe.escape(hostile)) in page
    assert "12345678901234567890" in page  # big integers survive pretty-printing


async def test_bad_input_gets_a_clear_refusal(client: Any) -> None:
    for path, status, text in [
        ("/jobs?state=nope", 400, "state: expected one of"),
        ("/jobs?after=abc", 400, "after: not a job id"),
        ("/jobs?after=1&before=2", 400, "not both"),
        ("/jobs/99999999999999999999", 404, "There is no job"),
        ("/jobs/123", 404, "not in the queue"),
        ("/job?id=x1", 400, "not a job id"),
        ("/nowhere", 404, "Not found"),
    ]:
        response = await client.get(path)
        assert response.status_code == status, path
        assert text in response.text, path
    jump = await client.get("/job?id=%2342", follow_redirects=False)
    assert jump.status_code == 303 and jump.headers["location"] == "/jobs/42"


async def test_security_headers(client: Any) -> None:
    response = await client.get("/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    static = await client.get("/static/dashboard.js")
    assert static.status_code == 200 and "content-security-policy" in static.headers


# -------------------------------------------------------------------- actions
async def test_retry_reschedule_fail_remove(client: Any, queue: Queue) -> None:
    jobs = await queue.utils.add_jobs([JobSpec("t", {"n": n}) for n in range(4)])
    ids = [j.id for j in jobs]
    await queue.shape(ids[0], attempts=25, last_error="gone", run_at="1 hour")
    token = await _token(client)
    back = "/jobs?state=failed"

    retried = await _post(
        client,
        "/actions/jobs",
        {"csrf_token": token, "action": "retry", "id": ids[0], "return_to": back},
    )
    assert retried.status_code == 303
    assert retried.headers["location"].startswith(back + "&notice=retry&notice_done=1")
    row = await queue.row(ids[0])
    assert row["attempts"] == 0
    assert row["run_at"] <= await queue.conn.fetchval("select now()")

    when = datetime(2031, 2, 3, 4, 5, tzinfo=timezone.utc)
    await _post(
        client,
        "/actions/jobs",
        {"csrf_token": token, "action": "reschedule", "id": ids[1], "run_at": "2031-02-03T04:05"},
    )
    assert (await queue.row(ids[1]))["run_at"] == when

    await _post(
        client,
        "/actions/jobs",
        {"csrf_token": token, "action": "fail", "id": ids[2], "reason": "poison <payload>"},
    )
    row = await queue.row(ids[2])
    assert row["attempts"] == row["max_attempts"] and row["last_error"] == "poison <payload>"

    await _post(client, "/actions/jobs", {"csrf_token": token, "action": "remove", "id": ids[3]})
    assert await queue.row(ids[3]) is None

    notice = (await client.get(retried.headers["location"])).text
    assert "Retried 1 job." in notice


async def test_jobs_held_by_a_worker_are_left_alone_and_the_page_says_why(
    client: Any, queue: Queue
) -> None:
    held = await _held(queue)
    free, held_live, held_dead = held["free"], held["live"], held["dead"]
    token = await _token(client)
    response = await _post(
        client,
        "/actions/jobs",
        {
            "csrf_token": token,
            "action": "remove",
            "id": [free, held_live, held_dead],
            "return_to": "/jobs",
        },
    )
    assert await queue.row(free) is None
    assert await queue.row(held_live) is not None
    assert await queue.row(held_dead) is not None
    page = (await client.get(response.headers["location"])).text
    assert "Removed 1 job." in page and "Left alone: 2 jobs" in page
    assert f"#{held_live}</a> running on alive-1" in page
    assert f"#{held_dead}</a> locked by dead-1, whose heartbeat stopped" in page


async def test_an_action_on_a_filter_asks_first_then_acts_on_every_match(
    client: Any, queue: Queue
) -> None:
    jobs = await queue.utils.add_jobs([JobSpec("a", {})] * 5 + [JobSpec("b", {})] * 2)
    for job in jobs[:4]:
        await queue.shape(job.id, attempts=25, last_error="x")
    await queue.shape(jobs[5].id, attempts=25, last_error="x")  # task b
    token = await _token(client)
    form = {
        "csrf_token": token,
        "action": "retry",
        "scope": "filter",
        "task": "a",
        "state": "failed",
        "return_to": "/jobs?task=a&state=failed",
    }
    confirm = await _post(client, "/actions/jobs", form)
    assert confirm.status_code == 200
    assert "Retry every job matching task a, state failed for good?" in confirm.text
    assert "4 jobs match right now" in confirm.text
    assert [(await queue.row(j.id))["attempts"] for j in jobs[:4]] == [25] * 4
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text))
    assert hidden["confirmed"] == "1" and hidden["task"] == "a" and hidden["state"] == "failed"
    done = await _post(client, "/actions/jobs", {k: html.unescape(v) for k, v in hidden.items()})
    assert done.status_code == 303 and "notice_done=4" in done.headers["location"]
    assert [(await queue.row(j.id))["attempts"] for j in jobs[:4]] == [0] * 4
    assert (await queue.row(jobs[5].id))["attempts"] == 25


async def test_nothing_selected_is_said_not_guessed(client: Any) -> None:
    token = await _token(client)
    response = await _post(
        client, "/actions/jobs", {"csrf_token": token, "action": "remove", "return_to": "/jobs"}
    )
    assert response.status_code == 303
    assert "No jobs were selected" in (await client.get(response.headers["location"])).text


async def test_unlock_frees_only_dead_workers(client: Any, queue: Queue) -> None:
    held = await _held(queue)
    token = await _token(client, "/workers")
    workers = (await client.get("/workers")).text
    assert workers.count("Unlock its jobs") == 2  # the dead one and the unknown one

    refused = await _post(client, "/actions/unlock", {"csrf_token": token, "worker_id": "alive-1"})
    assert refused.status_code == 409 and "is alive" in refused.text
    assert (await queue.row(held["live"]))["locked_by"] == "alive-1"

    unknown = await _post(
        client, "/actions/unlock", {"csrf_token": token, "worker_id": "node-pool"}
    )
    assert unknown.status_code == 400 and "keeps no heartbeat" in unknown.text
    assert (await queue.row(held["unknown"]))["locked_by"] == "node-pool"

    freed = await _post(
        client,
        "/actions/unlock",
        {"csrf_token": token, "worker_id": "dead-1", "return_to": "/workers"},
    )
    assert freed.status_code == 303
    assert (await queue.row(held["dead"]))["locked_by"] is None
    assert "Unlocked worker dead-1: 1 job(s)" in (await client.get(freed.headers["location"])).text

    await _post(
        client,
        "/actions/unlock",
        {"csrf_token": token, "worker_id": "node-pool", "confirm_dead": "1"},
    )
    assert (await queue.row(held["unknown"]))["locked_by"] is None


# ------------------------------------------------------------------ refusals
async def test_posts_without_a_valid_token_change_nothing(
    client: Any, client_for: Any, dashboard: Any, queue: Queue
) -> None:
    job = await queue.utils.add_job("t", {})
    token = await _token(client)
    other = client_for(dashboard)
    other_token = await _token(other)
    attempts = [
        (client, {"action": "remove", "id": job.id}, {}),
        (client, {"action": "remove", "id": job.id, "csrf_token": "forged"}, {}),
        (client, {"action": "remove", "id": job.id, "csrf_token": other_token}, {}),
        (
            client,
            {"action": "remove", "id": job.id, "csrf_token": token},
            {"origin": "https://evil.example"},
        ),
        (
            client,
            {"action": "remove", "id": job.id, "csrf_token": token},
            {"sec-fetch-site": "cross-site"},
        ),
    ]
    for who, data, headers in attempts:
        response = await _post(who, "/actions/jobs", data, **headers)
        assert response.status_code == 403, (data, headers)
        assert "Refused" in response.text
    assert await queue.row(job.id) is not None
    accepted = await _post(
        client,
        "/actions/jobs",
        {"action": "remove", "id": job.id, "csrf_token": token},
        origin="http://dashboard.test",
    )
    assert accepted.status_code == 303
    assert await queue.row(job.id) is None


async def test_read_only_hides_and_refuses(
    make_dashboard: Any, client_for: Any, queue: Queue
) -> None:
    job = await queue.utils.add_job("t", {})
    await queue.heartbeat("dead-1", silent="5 min")
    await queue.shape(job.id, attempts=1, locked_at="-5 min", locked_by="dead-1")
    client = client_for(make_dashboard(read_only=True, secret="known secret"))
    for path in ("/", "/jobs", f"/jobs/{job.id}", "/workers"):
        text = (await client.get(path)).text
        assert 'method="post"' not in text and "Retry now" not in text, path
        assert "read-only" in text
    # A token that would be valid: the refusal is for being read-only, nothing else.
    token = CsrfGuard("known secret").token_for(client.cookies[CSRF_COOKIE])
    for path, data in [
        ("/actions/jobs", {"action": "remove", "id": job.id}),
        ("/actions/unlock", {"worker_id": "dead-1"}),
    ]:
        response = await _post(client, path, {**data, "csrf_token": token})
        assert response.status_code == 403 and "read-only" in response.text
    assert (await queue.row(job.id))["locked_by"] == "dead-1"


async def test_return_to_never_leaves_the_dashboard(client: Any) -> None:
    token = await _token(client)
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil", "jobs", ""):
        response = await _post(
            client, "/actions/jobs", {"csrf_token": token, "action": "retry", "return_to": target}
        )
        assert response.status_code == 303
        assert response.headers["location"].startswith("/?notice="), target


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
async def test_auth_guards_every_request(make_dashboard: Any, client_for: Any, scheme: str) -> None:
    from kongtask.dashboard.security import AuthMiddleware, Credentials
    from kongtask.errors import ConfigError

    spec = "basic:ops:s3cret pass" if scheme == "basic" else "bearer:" + "t" * 32
    credentials = Credentials.parse(spec)
    assert "s3cret" not in repr(credentials) and "tttt" not in repr(credentials)
    client = client_for(AuthMiddleware(make_dashboard(), credentials))
    bare = await client.get("/")
    assert bare.status_code == 401 and scheme.capitalize() in bare.headers["www-authenticate"]
    good = {"basic": ("ops", "s3cret pass"), "bearer": None}[scheme]
    if good:
        assert (await client.get("/", auth=good)).status_code == 200
        assert (await client.get("/", auth=("ops", "wrong"))).status_code == 401
        assert (
            await client.get("/static/dashboard.css", auth=("x", "s3cret pass"))
        ).status_code == 401
    else:
        ok = await client.get("/", headers={"authorization": "Bearer " + "t" * 32})
        assert ok.status_code == 200
        bad = await client.get("/", headers={"authorization": "Bearer " + "t" * 31})
        assert bad.status_code == 401
    for broken in ("basic:onlyuser", "bearer:short", "digest:a:b", "basic::pw"):
        with pytest.raises(ConfigError) as info:
            Credentials.parse(broken)
        assert "--auth" in str(info.value)


async def test_mounted_under_a_prefix(make_dashboard: Any, client_for: Any, queue: Queue) -> None:
    job = await queue.utils.add_job("t", {})
    host = Starlette(routes=[Mount("/ops/jobs", app=make_dashboard())])
    client = client_for(host)
    page = await client.get("/ops/jobs/jobs")
    assert page.status_code == 200
    assert f'href="/ops/jobs/jobs/{job.id}"' in page.text
    assert 'src="/ops/jobs/static/dashboard.js' in page.text
    assert "path=/ops/jobs" in page.headers["set-cookie"].lower()
    assert (await client.get("/ops/jobs/static/dashboard.css")).status_code == 200
    response = await _post(
        client,
        "/ops/jobs/actions/jobs",
        {
            "csrf_token": csrf_token(page.text),
            "action": "remove",
            "id": job.id,
            "return_to": "/ops/jobs/jobs",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ops/jobs/jobs?notice=remove")
    assert await queue.row(job.id) is None


async def test_a_missing_schema_is_named(database_url: str, client_for: Any) -> None:
    from kongtask.dashboard import create_app

    app = create_app(database_url, schema="kt_never_migrated")
    try:
        response = await client_for(app).get("/")
        assert response.status_code == 503
        assert "kt_never_migrated" in response.text and "kongtask migrate" in response.text
    finally:
        await app.aclose()


async def test_workers_page_marks_the_dead(client: Any, queue: Queue) -> None:
    await queue.heartbeat("w-alive")
    await queue.heartbeat("w-dead", silent="2 min")
    page = (await client.get("/workers")).text
    alive = re.search(r"w-alive</code>.*?</tr>", page, re.S)
    dead = re.search(r"w-dead</code>.*?</tr>", page, re.S)
    assert alive and ">alive<" in alive.group(0)
    assert dead and ">dead<" in dead.group(0)
    assert '<tr class="is-dead">\n      <td><code>w-dead' in page
    overview = (await client.get("/")).text
    assert re.search(
        r"workers alive / dead</span>\s*<span class=\"value\"><a[^>]*>1 / 1<", overview
    )


async def test_cron_page_shows_next_tick_and_lateness(
    make_dashboard: Any, client_for: Any, queue: Queue
) -> None:
    crontab = "* * * * * every_minute\n0 4 * * * nightly ?fill=1h\n*/5 * * * * fresh_one"
    known = f"insert into {quote_ident(queue.schema)}._private_known_crontabs values ($1, $2, $3)"
    now = datetime.now(timezone.utc)
    await queue.conn.execute(
        known, "every_minute", now - timedelta(hours=1), now - timedelta(minutes=30)
    )
    await queue.conn.execute(known, "nightly", now - timedelta(days=1), None)
    await queue.conn.execute(
        known, "removed_item", now - timedelta(days=9), now - timedelta(days=8)
    )
    client = client_for(make_dashboard(crontab=crontab))
    page = (await client.get("/cron")).text
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<code>(\w+)</code>.*?</tr>", page, re.S)}
    assert "behind since" in rows["every_minute"]
    assert "not registered" in rows["fresh_one"]
    # The next */5 tick: on a five-minute boundary at most five minutes ahead, shown
    # as "in …" (or "now" when the page was drawn within a second of it).
    tick = re.search(r'<span title="([^"]+ UTC)">(in \d[^<]*|now)</span>', rows["fresh_one"])
    assert tick, rows["fresh_one"]
    when = datetime.strptime(tick.group(1), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
    assert when.minute % 5 == 0 and when.second == 0
    assert now - timedelta(seconds=1) < when <= now + timedelta(minutes=5, seconds=1)
    assert "not in this crontab" in rows["removed_item"]
    assert "1 h" in rows["nightly"]  # backfill shown
    bare = client_for(make_dashboard())
    assert "was not given to this dashboard" in (await bare.get("/cron")).text


async def test_a_borrowed_pool_is_used_and_left_open(
    database_url: str, client_for: Any, queue: Queue
) -> None:
    from kongtask.dashboard import create_app

    job = await queue.utils.add_job("t", {})
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        app = create_app(pool, schema=queue.schema)
        client = client_for(app)
        token = await _token(client)
        response = await _post(
            client, "/actions/jobs", {"csrf_token": token, "action": "remove", "id": job.id}
        )
        assert response.status_code == 303 and await queue.row(job.id) is None
        await app.aclose()
        assert await pool.fetchval("select 1") == 1
    finally:
        await pool.close()
    with pytest.raises(ConfigError, match="one Connection cannot serve"):
        create_app(queue.conn)


async def test_a_schema_without_heartbeats(client: Any, queue: Queue) -> None:
    """graphile-worker's own schema has no heartbeat table: lock holders are still listed."""
    job = await queue.utils.add_job("t", {})
    await queue.shape(job.id, attempts=1, locked_at="-1 min", locked_by="node-pool")
    await queue.conn.execute(f"drop table {quote_ident(queue.schema)}._kongtask_workers")
    workers = (await client.get("/workers")).text
    assert "no heartbeat table" in workers and "node-pool" in workers
    assert "Unlock its jobs" in workers
    overview = await client.get("/")
    assert overview.status_code == 200 and "workers alive" in overview.text
    assert (await client.get(f"/jobs/{job.id}")).status_code == 200
