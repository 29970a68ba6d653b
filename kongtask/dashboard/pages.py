"""The pages (GET): overview, jobs, one job, workers, cron.

Each page reads with one statement per panel and renders a template; with
``?fragment=1`` it renders only its live part, which the page's script
fetches every few seconds and swaps in place. Nothing here writes.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import cronview, formatting, overview, rates
from .actions import read_notice
from .app import Dashboard, base_path
from .filters import Cursor, FilterError, JobFilter, parse_job_id

#: What the reschedule field proposes: a short delay, the usual "not now, soon".
RESCHEDULE_DEFAULT = timedelta(minutes=10)


def _fragment(request: Request) -> bool:
    return request.query_params.get("fragment") == "1"


class Pages:
    """GET handlers of one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    async def _page(self, request: Request, name: str, context: dict[str, Any]) -> Response:
        """``name.jinja``, or ``_name_live.jinja`` alone when the script asks for the fragment.

        The whole page also shows the outcome of the action that led here.
        """
        now = datetime.now(timezone.utc)
        fragment = _fragment(request)
        return self.d.render(
            request,
            f"_{name}_live.jinja" if fragment else f"{name}.jinja",
            {
                "page": name,
                "now": now,
                "default_run_at": (now + RESCHEDULE_DEFAULT).strftime("%Y-%m-%dT%H:%M"),
                "notice": None if fragment else await read_notice(self.d, request),
                **context,
            },
        )

    # ------------------------------------------------------------- overview
    async def overview(self, request: Request) -> Response:
        d = self.d
        q = d.queries
        options = d.options
        await d.start()
        started = time.perf_counter()
        summary = await d.fetchrow(
            q.summary(heartbeats=d.heartbeats), q.jobs_table, *d.dead_after()
        )
        assert summary is not None
        d.history.add(summary["now"], summary["inserted"], summary["deleted"])
        live = int(summary["live"])
        exact_asked = request.query_params.get("exact") == "1"
        if exact_asked or live <= options.exact_count_limit:
            counts = overview.build(await d.fetch(q.state_counts))
        else:
            percent = min(100.0, 100.0 * options.sample_rows / live)
            rows = await d.fetch(q.state_counts_sampled, percent)
            counts = overview.build(rows, live_rows=live, sample_percent=percent)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return await self._page(
            request,
            "overview",
            {
                "summary": summary,
                "counts": counts,
                "exact_asked": exact_asked,
                "elapsed_ms": elapsed_ms,
                "chart": rates.chart(d.history.rates(), summary["now"], options.history_seconds),
                "recent": d.history.recent(60),
            },
        )

    # ----------------------------------------------------------------- jobs
    async def jobs(self, request: Request) -> Response:
        d = self.d
        params = request.query_params
        try:
            job_filter = JobFilter.from_params(params)
            cursor = Cursor.from_params(params)
        except FilterError as exc:
            raise HTTPException(400, f"This list cannot be shown: {exc}.") from None
        await d.start()
        size = d.options.page_size
        backwards = cursor.before is not None
        at = cursor.before if backwards else cursor.after
        shape = job_filter.shape(cursor=at is not None, backwards=backwards)
        rows = await d.fetch(
            d.queries.job_list(shape),
            *job_filter.values(),
            *([at] if at is not None else []),
            size + 1,
        )
        beyond = len(rows) > size
        rows = rows[:size]
        if backwards:
            rows.reverse()
        has_next = beyond if not backwards else True
        has_previous = beyond if backwards else cursor.after is not None
        names = await d.fetch(d.queries.names) if not _fragment(request) else []
        return await self._page(
            request,
            "jobs",
            {
                "rows": rows,
                "filter": job_filter,
                "next_query": job_filter.query(after=rows[-1]["id"]) if rows and has_next else None,
                "previous_query": (
                    job_filter.query(before=rows[0]["id"]) if rows and has_previous else None
                ),
                "paged": at is not None,
                "tasks": [r["name"] for r in names if not r["is_queue"]],
                "queues": [r["name"] for r in names if r["is_queue"]],
                "return_to": _here(request),
            },
        )

    async def job(self, request: Request) -> Response:
        d = self.d
        job_id = int(request.path_params["job_id"])
        if not 1 <= job_id < 2**63:
            raise HTTPException(404, f"There is no job #{job_id}.")
        await d.start()
        row = await d.fetchrow(d.queries.job(heartbeats=d.heartbeats), job_id)
        if row is None:
            raise HTTPException(
                404,
                f"Job #{job_id} is not in the queue: it finished, was removed, "
                "or never existed (finished jobs leave no trace).",
            )
        return await self._page(
            request,
            "job",
            {
                "job": row,
                "flags": formatting.flag_names(row["flags"]),
                "holder": _holder(row, d.options.dead_worker_timeout),
                "return_to": _here(request),
            },
        )

    async def find_job(self, request: Request) -> Response:
        """The header's "job #" box: straight to that job's page."""
        try:
            job_id = parse_job_id(request.query_params.get("id", ""))
        except FilterError as exc:
            raise HTTPException(400, f"No such job: {exc}.") from None
        return RedirectResponse(f"{base_path(request)}/jobs/{job_id}", status_code=303)

    # -------------------------------------------------------------- workers
    async def workers(self, request: Request) -> Response:
        d = self.d
        await d.start()
        rows = await d.fetch(d.queries.workers(heartbeats=d.heartbeats), *d.dead_after())
        return await self._page(
            request,
            "workers",
            {
                "workers": rows,
                "heartbeats": d.heartbeats,
                "return_to": _here(request),
            },
        )

    # ----------------------------------------------------------------- cron
    async def cron(self, request: Request) -> Response:
        d = self.d
        await d.start()
        known = await d.fetch(d.queries.known_crontabs)
        now = datetime.now(timezone.utc)
        return await self._page(
            request,
            "cron",
            {
                "items": cronview.build(known, d.cron_items, now),
                "has_crontab": d.cron_items is not None,
                "grace_minutes": int(cronview.GRACE.total_seconds() // 60),
            },
        )


def _here(request: Request) -> str:
    """This page's path and query, minus fragment and notice parameters: where an
    action started from this page sends the browser back to."""
    keep = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("fragment", "exact") and not k.startswith("notice")
    ]
    return request.url.path + ("?" + urlencode(keep) if keep else "")


def _holder(row: Any, dead_after: float) -> dict[str, Any] | None:
    """Who holds a running job, and whether they still look alive."""
    if row["state"] != "running":
        return None
    silent = row["holder_silent"]
    return {
        "worker": row["locked_by"],
        "silent": silent,
        "dead": silent is not None and silent > dead_after,
        "known": silent is not None,
    }
