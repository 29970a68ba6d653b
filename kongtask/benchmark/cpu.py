"""CPU time read from ``/proc``: of one process, and of a whole local PostgreSQL server.

On a two-core box a queue's throughput is a question of where the CPU goes,
so every throughput scenario reports CPU per job for the process under test
and for the server. Wall-clock rates alone cannot tell a faster client from
one that just leaves more of the machine to PostgreSQL.

The server's figure is the postmaster's own time *plus the time of its
children that have exited* (``cutime``/``cstime``: the kernel adds a reaped
child's CPU to its parent), plus the live children's own time. So a backend
that connects and quits inside a window is counted, and so are the
checkpointer, the WAL writer and autovacuum, which work for the jobs too.
Linux only; elsewhere, or when the server is not on this machine, the figure
is None and :attr:`ServerCpu.reason` says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: ``/proc`` counts CPU in clock ticks (usually 100 a second).
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: How far apart the server's own start time and the local process's may be
#: for the two to count as the same server (``/proc``'s boot time is whole
#: seconds and drifts a little on long-running VMs).
START_TOLERANCE_S = 5.0


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (index 0 is the state).

    The name is cut at the *last* ``)``: it may itself hold spaces or brackets.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _ticks(fields: list[str], *, reaped_children: bool) -> int:
    # Field numbers of proc(5): utime 14, stime 15, cutime 16, cstime 17.
    used = int(fields[11]) + int(fields[12])
    if reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else _ticks(fields, reaped_children=False) / TICKS


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def start_epoch(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (from boot time + start ticks)."""
    fields = _stat(pid)
    if fields is None:
        return None
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(fields[19]) / TICKS


def _children(pid: int) -> list[int]:
    """Live children of ``pid``: the kernel's list when it keeps one, else a scan of /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and parent_pid(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


@dataclass(slots=True)
class ServerCpu:
    """Where the server's CPU can be read, or why it cannot."""

    pid: int | None
    reason: str | None = None
    method: str | None = None

    @property
    def available(self) -> bool:
        return self.pid is not None

    def sample(self) -> float | None:
        """CPU seconds the server has used so far, or None when it cannot be read.

        Children are read first and the postmaster last: a backend that exits
        in between is then found in the postmaster's ``cutime`` rather than
        lost (at worst, counted twice for the microseconds it had left).
        """
        if self.pid is None:
            return None
        ticks = 0
        for child in _children(self.pid):
            fields = _stat(child)
            if fields is not None:
                ticks += _ticks(fields, reaped_children=False)
        fields = _stat(self.pid)
        if fields is None:
            return None  # the server restarted or went away
        return (ticks + _ticks(fields, reaped_children=True)) / TICKS

    def describe(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "postmaster_pid": self.pid,
            "method": self.method,
            "reason": self.reason,
            "tick_s": 1 / TICKS,
            "what": "postmaster utime+stime+cutime+cstime plus utime+stime of its live "
            "children, from /proc",
        }


def locate_server(
    data_directory: str | None, port: int, started: float, backend_pid: int
) -> ServerCpu:
    """Find the local postmaster of the server the harness is connected to.

    ``data_directory`` (None when this role may not read it), ``port`` and
    ``started`` (``pg_postmaster_start_time()`` as epoch seconds) come from
    the server itself; ``backend_pid`` is ``pg_backend_pid()`` of a live
    connection. First ``postmaster.pid`` in the data directory, checked
    against the port and start time, so a remote server whose data directory
    happens to exist here too is not mistaken for a local one. When that file
    cannot be read (the data directory is private to the server's OS user),
    the parent of the harness's own backend, checked by its start time.
    """
    if not os.path.isdir("/proc/self"):
        return ServerCpu(None, "no /proc on this machine: server CPU is not measured")
    reason = "this role may not read data_directory (needs pg_read_all_settings)"
    if data_directory is not None:
        try:
            lines = (Path(data_directory) / "postmaster.pid").read_text().splitlines()
        except OSError as exc:
            reason = f"cannot read {data_directory}/postmaster.pid: {exc.strerror}"
        else:
            try:
                pid, folder, stamp, file_port = (
                    int(lines[0]),
                    lines[1],
                    int(lines[2]),
                    int(lines[3]),
                )
            except (IndexError, ValueError):
                reason = f"{data_directory}/postmaster.pid is not in the expected format"
            else:
                if (
                    folder == data_directory
                    and file_port == port
                    and abs(stamp - started) < 2
                    and _stat(pid) is not None
                ):
                    return ServerCpu(pid, None, "postmaster.pid")
                reason = (
                    f"{data_directory}/postmaster.pid here belongs to another server: "
                    "the one connected to is not on this machine"
                )
    parent = parent_pid(backend_pid)
    if parent is not None:
        born = start_epoch(parent)
        if born is not None and abs(born - started) < START_TOLERANCE_S:
            return ServerCpu(parent, None, "parent of the harness's backend")
    return ServerCpu(
        None,
        f"{reason}; and its backend is not a local process, so the server is not on this machine",
    )
