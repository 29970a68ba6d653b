"""How the five job states read on the page.

The states themselves (which rows are in which) are defined once, as SQL, in
:data:`kongtask.queries.dashboard.JOB_STATES`; this module only names and
explains them for people, in the order an operator reads a queue: what can
run, what waits, what runs, what is struggling, what is dead.
"""

from __future__ import annotations

from ..queries.dashboard import STATE_NAMES

#: Column order on the pages (the SQL's precedence order is another matter).
DISPLAY_ORDER: tuple[str, ...] = ("available", "scheduled", "running", "retrying", "failed")

LABELS: dict[str, str] = {
    "available": "available",
    "scheduled": "scheduled",
    "running": "running",
    "retrying": "retrying",
    "failed": "failed for good",
}

HELP: dict[str, str] = {
    "available": "due now and free: the next worker with a free slot takes it",
    "scheduled": "never attempted; its run_at is in the future",
    "running": "locked by a worker within the last 4 hours",
    "retrying": "failed at least once; waiting out its backoff before the next attempt",
    "failed": "out of attempts: it will not run again unless retried",
}

if set(DISPLAY_ORDER) != set(STATE_NAMES) or set(LABELS) != set(STATE_NAMES):
    raise RuntimeError("dashboard state names differ from kongtask.queries.dashboard.JOB_STATES")
