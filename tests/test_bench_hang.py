"""The report a benchmark child that timed out leaves in the error (benchmark/hang.py)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from kongtask import WorkerUtils
from kongtask.benchmark.engines import KONGTASK, kongtask_engine, timed_out
from kongtask.benchmark.hang import hang_report

WORKER = """
import asyncio, sys
import kongtask

async def main():
    async def noop(payload, helpers):
        return None
    runner = await kongtask.run(sys.argv[1], {"noop": noop}, schema=sys.argv[2],
                                handle_signals=True)
    print("READY", flush=True)
    await runner.wait()

asyncio.run(main())
"""


def test_a_sleeping_process_is_named_with_its_state() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        report = hang_report(proc.pid, kongtask=False)
    finally:
        proc.kill()
        proc.wait()
    assert re.search(rf"child {proc.pid}: state [RSD], waiting in ", report), report
    assert f"child {proc.pid}: no longer in the process table" in hang_report(
        proc.pid, kongtask=False
    )


async def test_a_kongtask_child_that_timed_out_is_reported_with_its_state(
    database_url: str, utils: WorkerUtils, tmp_path: Path
) -> None:
    """``timed_out`` (what every bench timeout raises): SIGUSR1 first, so the live
    pool writes its state to stderr, then the kill, then an error carrying both."""
    with (tmp_path / "stderr").open("w+b") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            database_url,
            utils.schema,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.startswith(b"READY"), line
            error = await timed_out(proc, kongtask_engine(KONGTASK, utils.schema), err, "stuck")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == -9  # killed after the report, not by SIGUSR1
    message = str(error)
    assert message.startswith("kongtask: stuck")
    assert f"child {proc.pid}: state" in message
    assert "state of worker" in message and "fetcher: " in message, message
