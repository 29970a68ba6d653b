"""``kongtask bench``: end-to-end benchmarks of kongtask, optionally against graphile-worker.

Every measurement runs in a child process (an *engine*): kongtask compiled,
kongtask pure (``KONGTASK_NO_EXTENSIONS=1``) and graphile-worker's
``bench/graphile-worker/bench.js`` are driven the same way: one command line
per scenario, one JSON object on the last stdout line. The harness itself only
prepares the database, runs the children one at a time (they share the
``jobs:insert`` NOTIFY channel, so two engines must never run at once), checks
that every job ran, and writes the table, the JSON and the chart.

This module stays import-light on purpose: ``python -m
kongtask.benchmark.worker_process`` imports it first, and its start-up time is
one of the things being measured.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kongtask bench ARGS``; returns the process exit code."""
    from .harness import main as _main

    return _main(argv)


__all__ = ["main"]
