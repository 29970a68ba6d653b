"""Small helpers shared by the harness and the child processes.

Kept free of heavy imports: the child process imports this module, and its
start-up time and idle memory are measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

#: The one task every engine registers (the same name as bench.js uses).
TASK = "bench_noop"
#: Sequential latency samples thrown away first, as bench.js does.
LATENCY_WARMUP = 50
#: How often the drained-or-not check polls ``count(*)`` (bench.js: 5 ms).
EMPTY_POLL_S = 0.005
#: RSS sampling period during a drain (bench.js: 50 ms).
MEMORY_SAMPLE_S = 0.05
#: How long an idle pool sits before its RSS is read (bench.js: 1 s).
IDLE_WAIT_S = 1.0
#: Marker line a child prints once its pool is ready (bench.js prints the same).
READY = "READY"
#: A child prints ``WINDOW start|end [name]`` at each edge of a timed window and
#: waits for ``GO`` on stdin, so the harness can sample the server's CPU there.
WINDOW = "WINDOW"
#: The harness's answer to a ``WINDOW`` line, and the processes scenario's start signal.
GO = "GO"


def bulk_insert_sql(quoted_schema: str) -> str:
    """bench.js's untimed bulk insert: ``$2`` jobs of task ``$1`` with payload ``{"i": 1..$2}``,
    built entirely in PostgreSQL so no client holds 200,000 specs in memory.

    ``quoted_schema`` must come from :func:`kongtask.db.quote_ident`.
    """
    s = quoted_schema
    return (
        f"select count(*) from {s}.add_jobs(array("
        f" select json_populate_record(null::{s}.job_spec,"
        "   json_build_object('identifier', $1::text, 'payload', json_build_object('i', g)))"
        " from generate_series(1, $2::int) g))"
    )


def payload_insert_sql(quoted_schema: str) -> str:
    """Like :func:`bulk_insert_sql`, payload ``{"i": g, ...$3}``: ``$3`` is a JSON object
    text spliced in as text, so every job stores exactly that JSON (key order and
    non-ASCII characters as given); ``{}`` gives bench.js's ``{"i": g}``."""
    s = quoted_schema
    payload = (
        "('{\"i\":' || g || case when $3::text = '{}' then '}'"
        " else ',' || substr($3::text, 2) end)::json"
    )
    return (
        f"select count(*) from {s}.add_jobs(array("
        f" select json_populate_record(null::{s}.job_spec,"
        f"   json_build_object('identifier', $1::text, 'payload', {payload}))"
        " from generate_series(1, $2::int) g))"
    )


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks: numpy's default, and bench.js's."""
    if not sorted_values:
        return None
    idx = (len(sorted_values) - 1) * p
    lo = math.floor(idx)
    hi = math.ceil(idx)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (idx - lo)


def rnd(value: float | None, digits: int = 3) -> float | None:
    """Round for JSON output, keeping None."""
    return None if value is None else round(value, digits)


def summarize(values: Iterable[float]) -> dict[str, float | None]:
    """min/p50/p95/p99/max, with the same keys bench.js reports."""
    s = sorted(values)
    return {
        "min": rnd(s[0]) if s else None,
        "p50": rnd(percentile(s, 0.5)),
        "p95": rnd(percentile(s, 0.95)),
        "p99": rnd(percentile(s, 0.99)),
        "max": rnd(s[-1]) if s else None,
    }


def median(values: Sequence[float]) -> float | None:
    """The p50 of a few round results (None when there are none)."""
    return percentile(sorted(values), 0.5)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of ``pid`` (default: this process), or None if unknown.

    Reads ``/proc`` directly rather than importing psutil so the measurement
    does not itself add a few MB to the process being measured.
    """
    path = f"/proc/{pid or 'self'}/statm"
    try:
        with open(path, "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's RSS (``VmHWM``), if available."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def cpu_seconds() -> float:
    """User + system CPU of this process so far, all threads (``getrusage``, µs resolution)."""
    try:
        import resource
    except ImportError:  # not POSIX: the same sum, from the process clock
        import time

        return time.process_time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_job_us(seconds: float | None, jobs: int) -> float | None:
    """CPU seconds spread over ``jobs``, in microseconds per job."""
    return None if seconds is None or jobs <= 0 else round(seconds * 1e6 / jobs, 2)


def mb(value: int | None) -> float | None:
    """Bytes as MiB with one decimal (bench.js's ``mb``)."""
    return None if value is None else round(value / (1024 * 1024), 1)
