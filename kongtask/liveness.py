"""Whether another pool's process still runs, for pools on this very host.

A pool that dies holds its claimed jobs until someone frees them. Other pools
notice a silent heartbeat after ``dead_worker_timeout``; but a pool on the
same host can know at once, from ``/proc``, that the process is gone. That
turns a crash followed by a restart (systemd, Kubernetes, the supervisor of
``--processes``) into an immediate recovery, and lets a job that kills its
process reach ``max_attempts`` in seconds rather than minutes.

"The same host" must mean the same kernel *and* the same pid namespace: two
containers on one kernel each have their own pid 7. So a pool records a host
key of both (the kernel's boot id and the inode of its pid namespace) and its
process's start time, which tells a reused pid from the original process.
Elsewhere than Linux there is no key, and recovery waits for heartbeats.
"""

from __future__ import annotations

import os
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def host_key() -> str | None:
    """This process's kernel boot id and pid namespace, or None when unknown."""
    try:
        boot = _BOOT_ID.read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{namespace}" if boot else None


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat``
    field 22), or None when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and brackets: fields follow the last ')'.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_gone(pid: int, started: int | None) -> bool:
    """Whether the process a pool recorded (``pid``, started at ``started``)
    no longer runs on this host: no such pid, or a different process under it."""
    now = process_start(pid)
    return now is None or (started is not None and now != started)


def own_identity() -> tuple[str | None, int, int | None]:
    """(host key, pid, start time) of this process, as a pool records them."""
    pid = os.getpid()
    return host_key(), pid, process_start(pid)
