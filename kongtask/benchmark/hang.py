"""What a child that timed out was doing, for the error that reports it.

A child that never ends is either stuck (a lock, a lost wake-up) or already
gone with its exit unnoticed; the two need different fixes, and the only
chance to tell them apart is before the harness kills it. So the report says
whether the process still exists and in which kernel state, and, when
``py-spy`` is installed, every thread's Python stack. A kongtask child is
first sent ``SIGUSR1``, on which a pool writes its state and every
coroutine's stack to its log (kongtask/statedump.py): the stderr tail the
error carries then shows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: How long py-spy may take to read the stacks.
_DUMP_TIMEOUT_S = 20
#: The longest part of the dump kept in the error.
_DUMP_LIMIT = 6000
#: How long a pool gets to write its state after SIGUSR1.
_STATE_WAIT_S = 1.0


def _process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "no longer in the process table"
    # The command name sits in parentheses and may hold spaces: the state follows it.
    state = stat.rpartition(")")[2].split()[0]
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
    except OSError:
        wchan = "?"
    return f"state {state}, waiting in {wchan}"


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def hang_report(pid: int, *, kongtask: bool) -> str:
    """A few lines about process ``pid`` (call it before killing the process, and
    read its stderr after: a kongtask pool writes its state there)."""
    state = _process_state(pid)
    lines = [f"\n--- child {pid}: {state} ---"]
    if not state.startswith("state ") or state.startswith("state Z"):
        return "\n".join(lines)  # gone, or exited and not yet reaped: no stacks to read
    if kongtask:
        try:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(_STATE_WAIT_S)
        except ProcessLookupError:
            pass
    spy = _py_spy()
    if spy is None:
        lines.append("(install py-spy to see its Python stacks here)")
        return "\n".join(lines)
    try:
        done = subprocess.run(
            [spy, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=_DUMP_TIMEOUT_S,
            check=False,
        )
        dump = (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        dump = f"py-spy failed: {exc}"
    lines.append(dump[-_DUMP_LIMIT:])
    return "\n".join(lines)
