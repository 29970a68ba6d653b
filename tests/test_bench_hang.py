"""The report a benchmark child that timed out leaves in the error (benchmark/hang.py)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from kongtask import WorkerUtils
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


async def test_a_kongtask_child_writes_its_state_before_it_is_killed(
    database_url: str, utils: WorkerUtils, tmp_path: Path
) -> None:
    schema = utils.schema
    err = (tmp_path / "stderr").open("w+b")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        database_url,
        schema,
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"READY"), line
        report = await asyncio.to_thread(hang_report, proc.pid, kongtask=True)
        assert proc.returncode is None  # SIGUSR1 did not end it
    finally:
        proc.kill()
        await proc.wait()
        err.seek(0)
        logged = err.read().decode()
        err.close()
    assert f"child {proc.pid}: state" in report
    assert "state of worker" in logged, logged
    assert "fetcher: " in logged and "running" in logged, logged
