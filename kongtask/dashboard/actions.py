"""The buttons (POST): retry, reschedule, remove, fail for good, unlock a dead worker.

Every change goes through :class:`kongtask.WorkerUtils`, so through the
schema's own admin functions, with graphile-worker's semantics and the same
ones as ``kongtask retry/remove/unlock``: a job locked by a worker within the
last 4 hours is left alone, and the page then says which jobs and why. Retry
is the CLI's ``retry`` (run now, attempts reset: a job failed for good runs
again); remove deletes by id (``complete_jobs``).

A request is refused before anything else is read when the dashboard is
read-only, when it looks cross-site, or when its CSRF token does not match
the browser's cookie. After a change the browser is sent back (303) to the
page it came from, with the outcome in the query string (``notice*``
parameters): stateless, so it works behind any number of processes, and the
page re-reads the skipped jobs to say why each was left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import InvalidJobSpec
from . import formatting, states
from .app import Dashboard, base_path
from .filters import FilterError, JobFilter, parse_job_id
from .security import CSRF_COOKIE, CSRF_FIELD, same_origin

#: What each job action is called in a notice.
JOB_ACTIONS: dict[str, str] = {
    "retry": "Retried",
    "reschedule": "Rescheduled",
    "remove": "Removed",
    "fail": "Marked as failed for good",
}
#: ... and on the button that confirms it.
VERBS: dict[str, str] = {
    "retry": "Retry",
    "reschedule": "Reschedule",
    "remove": "Remove",
    "fail": "Fail for good",
}
#: Most jobs one page can select (the largest page size).
MAX_SELECTED = 500
#: Most jobs one action on a filter changes; the notice says when more match.
FILTER_LIMIT = 10_000
#: Jobs per admin-function call when acting on a filter.
BATCH = 500
#: Skipped jobs named one by one in a notice; the rest are counted.
NAMED_SKIPS = 20
MAX_REASON = 2000
DEFAULT_REASON = "Failed for good by an operator (kongtask dashboard)"


class Actions:
    """POST handlers of one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    async def _guard(self, request: Request) -> FormData:
        """The form of a request allowed to change something; refuses the rest (403)."""
        if self.d.options.read_only:
            raise HTTPException(
                403, "This dashboard is read-only: it shows the queue and changes nothing."
            )
        why = same_origin(request.headers)
        if why:
            raise HTTPException(403, f"Refused: {why}.")
        form = await request.form(max_files=0, max_fields=MAX_SELECTED + 50)
        token = form.get(CSRF_FIELD)
        if not self.d.csrf.check(
            request.cookies.get(CSRF_COOKIE), token if isinstance(token, str) else None
        ):
            raise HTTPException(
                403,
                "Refused: the form's security token is missing or does not belong to this "
                "browser. Reload the page and try again.",
            )
        await self.d.start()
        return form

    # ----------------------------------------------------------------- jobs
    async def jobs(self, request: Request) -> Response:
        form = await self._guard(request)
        action = _field(form, "action")
        if action not in JOB_ACTIONS:
            raise HTTPException(400, f"Unknown action {action[:40]!r}.")
        run_at = _run_at(form) if action == "reschedule" else None
        reason = _reason(form) if action == "fail" else None
        back = safe_return(request, _field(form, "return_to"))
        notice: dict[str, Any] = {"notice": action}
        if _field(form, "scope") == "filter":
            try:
                job_filter = JobFilter.from_params(_single_values(form))
            except FilterError as exc:
                raise HTTPException(400, f"This filter cannot be used: {exc}.") from None
            if _field(form, "confirmed") != "1":
                return await self._confirm(request, form, action, job_filter)
            done, skipped, more = await self._apply_to_filter(action, job_filter, run_at, reason)
            notice["notice_more"] = "1" if more else None
        else:
            ids = _selected_ids(form)
            if not ids:
                return _back(back, {"notice": "empty"})
            done = await self._apply(action, ids, run_at, reason)
            skipped = sorted(set(ids) - set(done))
        notice["notice_done"] = str(len(done))
        if skipped:
            notice["notice_skipped"] = ",".join(map(str, skipped[:NAMED_SKIPS]))
            notice["notice_skipped_total"] = str(len(skipped))
        return _back(back, notice)

    async def _apply(
        self, action: str, ids: Sequence[int], run_at: datetime | None, reason: str | None
    ) -> list[int]:
        """Run one admin function on ``ids``; the ids it changed (the others were left alone)."""
        utils = self.d.utils
        assert utils is not None
        now = None
        if action == "retry":
            row = await self.d.fetchrow(self.d.queries.now)
            assert row is not None
            now = row[0]
        try:
            async with self.d.guarded():
                if action == "retry":
                    jobs = await utils.reschedule_jobs(ids, run_at=now, attempts=0)
                elif action == "reschedule":
                    jobs = await utils.reschedule_jobs(ids, run_at=run_at)
                elif action == "remove":
                    jobs = await utils.complete_jobs(ids)
                else:
                    jobs = await utils.permanently_fail_jobs(ids, reason)
        except InvalidJobSpec as exc:
            raise HTTPException(400, f"Refused by kongtask: {exc}.") from None
        return [job.id for job in jobs]

    async def _apply_to_filter(
        self,
        action: str,
        job_filter: JobFilter,
        run_at: datetime | None,
        reason: str | None,
    ) -> tuple[list[int], list[int], bool]:
        """Act on the jobs matching a filter, a batch at a time, up to FILTER_LIMIT.

        Walks the filter in id order from a cursor, so each job is offered to
        the admin function once even as the action moves it out of the filter.
        """
        q = self.d.queries
        done: list[int] = []
        skipped: list[int] = []
        cursor: int | None = None
        seen = 0
        while seen < FILTER_LIMIT:
            shape = job_filter.shape(cursor=cursor is not None, ids_only=True)
            want = min(BATCH, FILTER_LIMIT - seen)
            rows = await self.d.fetch(
                q.job_list(shape),
                *job_filter.values(),
                *([cursor] if cursor is not None else []),
                want,
            )
            ids = [row["id"] for row in rows]
            if not ids:
                return done, skipped, False
            changed = await self._apply(action, ids, run_at, reason)
            done += changed
            skipped += sorted(set(ids) - set(changed))
            seen += len(ids)
            cursor = ids[-1]
            if len(ids) < want:
                return done, skipped, False
        return done, skipped, True

    async def _confirm(
        self, request: Request, form: FormData, action: str, job_filter: JobFilter
    ) -> Response:
        """The "are you sure" page of an action on a filter, with how many jobs match."""
        q = self.d.queries
        shape = job_filter.shape(cursor=False)
        row = await self.d.fetchrow(q.filter_size(shape), *job_filter.values(), FILTER_LIMIT + 1)
        matching = int(row[0]) if row else 0
        hidden = [
            (name, value)
            for name, value in form.multi_items()
            if name not in (CSRF_FIELD, "confirmed", "id") and isinstance(value, str)
        ]
        return self.d.render(
            request,
            "confirm.jinja",
            {
                "page": "jobs",
                "action": action,
                "verb": VERBS[action],
                "filter": job_filter,
                "matching": matching,
                "limit": FILTER_LIMIT,
                "hidden": hidden,
                "cancel_to": safe_return(request, _field(form, "return_to")),
                "notice": None,
            },
        )

    # --------------------------------------------------------------- unlock
    async def unlock(self, request: Request) -> Response:
        """Free the jobs and queues of a worker that is dead (``force_unlock_workers``).

        A worker with a fresh heartbeat is refused: its jobs are running, and
        unlocking them would let a second worker run them at the same time. A
        lock holder without heartbeats (graphile-worker) cannot be judged, so
        the operator must tick that it is dead.
        """
        form = await self._guard(request)
        d = self.d
        worker = _field(form, "worker_id").strip()
        if not worker or len(worker) > 512 or "\x00" in worker:
            raise HTTPException(400, "Unlock: give the id of one worker.")
        back = safe_return(request, _field(form, "return_to"))
        silence = await d.fetchrow(d.queries.worker_silence, worker) if d.heartbeats else None
        if silence is not None and silence["silent"] <= d.options.dead_worker_timeout:
            raise HTTPException(
                409,
                f"Worker {worker} is alive (last heartbeat "
                f"{formatting.duration(silence['silent'])} ago): unlocking its jobs would let "
                "another worker run them while it still does. Stop it first; it frees its "
                "jobs itself when it stops.",
            )
        if silence is None and _field(form, "confirm_dead") != "1":
            raise HTTPException(
                400,
                f"Worker {worker} keeps no heartbeat, so the dashboard cannot tell whether "
                "it is alive: tick “this worker is dead” to unlock its jobs.",
            )
        held = await d.fetchrow(d.queries.held_by, worker)
        assert held is not None and d.utils is not None
        async with d.guarded():
            await d.utils.force_unlock_workers([worker])
        return _back(
            back,
            {
                "notice": "unlock",
                "notice_worker": worker,
                "notice_jobs": str(held["jobs"]),
                "notice_queues": str(held["queues"]),
            },
        )


# ------------------------------------------------------------------ notices
async def read_notice(dashboard: Dashboard, request: Request) -> dict[str, Any] | None:
    """The outcome of the action that sent the browser here, if any, for the page's banner."""
    params = request.query_params
    kind = params.get("notice")
    if kind == "empty":
        return {
            "level": "warning",
            "message": "No jobs were selected: tick the jobs to act on, or choose "
            "“every job matching this filter”.",
            "skipped": [],
        }
    if kind == "unlock":
        return {
            "level": "ok",
            "message": f"Unlocked worker {params.get('notice_worker', '?')}: "
            f"{_count(params, 'notice_jobs')} job(s) and {_count(params, 'notice_queues')} "
            "named queue(s) it held are free to run again.",
            "skipped": [],
        }
    if kind not in JOB_ACTIONS:
        return None
    done = _count(params, "notice_done")
    message = f"{JOB_ACTIONS[kind]} {done:,} job{'s' if done != 1 else ''}."
    skipped_ids = []
    for text in params.get("notice_skipped", "").split(",")[:NAMED_SKIPS]:
        try:
            skipped_ids.append(parse_job_id(text))
        except FilterError:
            continue
    skipped_total = max(_count(params, "notice_skipped_total"), len(skipped_ids))
    skipped = await _why_skipped(dashboard, skipped_ids) if skipped_ids else []
    if params.get("notice_more") == "1":
        message += (
            f" Stopped after {FILTER_LIMIT:,} jobs: more match the filter; "
            "run the action again for the next ones."
        )
    return {
        "level": "warning" if skipped_total else "ok",
        "message": message,
        "skipped": skipped,
        "skipped_total": skipped_total,
    }


async def _why_skipped(dashboard: Dashboard, ids: list[int]) -> list[tuple[int, str]]:
    """Why the admin function left each job alone, as it stands now."""
    rows = await dashboard.fetch(dashboard.queries.job_states(heartbeats=dashboard.heartbeats), ids)
    found = {row["id"]: row for row in rows}
    out = []
    for job_id in ids:
        row = found.get(job_id)
        if row is None:
            out.append((job_id, "no longer in the queue (it finished or was removed meanwhile)"))
        elif row["state"] == "running":
            silent = row["holder_silent"]
            if silent is not None and silent > dashboard.options.dead_worker_timeout:
                out.append(
                    (
                        job_id,
                        f"locked by {row['locked_by']}, whose heartbeat stopped "
                        f"{formatting.duration(silent)} ago: unlock that worker's jobs "
                        "on the Workers page",
                    )
                )
            else:
                out.append(
                    (
                        job_id,
                        f"running on {row['locked_by']}: a job is never changed under "
                        "a live worker",
                    )
                )
        else:
            out.append((job_id, f"left alone, now {states.LABELS[row['state']]}"))
    return out


# -------------------------------------------------------------------- input
def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _single_values(form: FormData) -> Mapping[str, str]:
    return {name: value for name, value in form.items() if isinstance(value, str)}


def _selected_ids(form: FormData) -> list[int]:
    ids: dict[int, None] = {}
    for value in form.getlist("id"):
        if not isinstance(value, str):
            continue
        try:
            ids[parse_job_id(value)] = None
        except FilterError as exc:
            raise HTTPException(400, f"Selected jobs: {exc}.") from None
    if len(ids) > MAX_SELECTED:
        raise HTTPException(400, f"At most {MAX_SELECTED} jobs can be selected at once.")
    return list(ids)


def _run_at(form: FormData) -> datetime:
    """The new run time of a reschedule; the form's field is UTC (the page says so)."""
    text = _field(form, "run_at").strip()
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            400, f"Reschedule: {text[:40]!r} is not a date and time (YYYY-MM-DD HH:MM, UTC)."
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _reason(form: FormData) -> str:
    text = _field(form, "reason").strip()
    if len(text) > MAX_REASON:
        raise HTTPException(400, f"Fail for good: the reason is over {MAX_REASON} characters.")
    return text or DEFAULT_REASON


def _count(params: Mapping[str, str], name: str) -> int:
    text = params.get(name, "0")
    return int(text) if text.isdigit() and len(text) < 19 else 0


def safe_return(request: Request, target: str) -> str:
    """``target`` if it is a path inside this dashboard, else the overview.

    Only same-dashboard paths: a form field must never send the browser
    elsewhere (an open redirect).
    """
    base = base_path(request)
    home = base + "/"
    if (
        not target
        or not target.startswith(home)
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 32 for ch in target)
    ):
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home
    return target


def _back(target: str, notice: Mapping[str, str | None]) -> Response:
    params = {k: v for k, v in notice.items() if v is not None}
    separator = "&" if "?" in target else "?"
    return RedirectResponse(target + separator + urlencode(params), status_code=303)
