"""``kongtask run --processes N``: N worker processes under one supervisor.

One Python process runs one event loop, so a CPU-bound mix of handlers (or
the decoding and bookkeeping of tens of thousands of jobs a second) saturates
one core. The queue needs no coordination between processes (``SKIP LOCKED``
does it), so the simplest scale-out is N independent ``kongtask run``
children. This module keeps them running:

* children are ``python -m kongtask <child_argv>``, each in its own process
  group, so a terminal's Ctrl-C reaches only the supervisor, which forwards
  it once: otherwise every child would see the signal twice (once from the
  terminal, once forwarded) and take the second as "force";
* SIGINT/SIGTERM are forwarded; the first means graceful shutdown, a second
  one is forwarded again and the children go forceful; after the first,
  nothing is restarted;
* a child that crashes or exits non-zero is restarted after a backoff that
  doubles per consecutive quick failure and resets once a child has run for
  :data:`STABLE_AFTER` seconds;
* a child exiting with a code that a restart cannot fix stops everything
  and becomes the supervisor's exit code: 57 (the schema holds a breaking
  migration newer than this kongtask), 2 (bad usage or configuration) and
  4 (tasks failed to load);
* a child exiting 0 without being asked to (``--once``) is not restarted.

No asyncio: a plain ``subprocess`` + ``signal`` + sleep loop, because the
supervisor runs no jobs and should be as hard to break as possible.
Children get ``KONGTASK_PROCESS_INDEX`` (0..N-1) and ``KONGTASK_PROCESSES``
in their environment, so per-process settings (say a metrics port offset)
can be derived from them. On Linux a child is also sent SIGTERM if the
supervisor dies (``PR_SET_PDEATHSIG``), so a SIGKILLed supervisor does not
leave orphans holding jobs.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from .processes_option import resolve_processes, without_processes

log = logging.getLogger("kongtask.supervisor")

#: A child that ran at least this long (seconds) counts as healthy: its next
#: crash restarts it after the initial backoff again.
STABLE_AFTER = 10.0
#: Child exit codes a restart cannot fix: stop all children and exit with it.
FATAL_EXIT_CODES = frozenset({2, 4, 57})
#: Exit codes (128 + N) of a child that died of SIGTERM/SIGINT itself, i.e. was
#: signalled before it installed its handlers, so before it fetched any job.
_SIGNALLED = frozenset({128 + signal.SIGTERM, 128 + signal.SIGINT})
#: The signal a worker answers with its state (kongtask/statedump.py); 0 where none.
_STATE_DUMP = getattr(signal, "SIGUSR1", 0)
#: How often (seconds) children are polled; also bounds restart latency.
_POLL = 0.05


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when we die.

    Looked up before forking: the preexec function must not import or load
    libraries in the child.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only a supervisor needs it (2 ms of every `kongtask run` otherwise)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None  # monotonic time of a pending restart
    exit_code: int | None = None  # last exit code


def _exit_code(returncode: int) -> int:
    """Popen's negative "killed by signal N" as the shell's 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class _Supervisor:
    def __init__(
        self,
        child_argv: list[str],
        processes: int,
        restart_backoff: float,
        max_backoff: float,
    ) -> None:
        self.argv = [sys.executable, "-m", "kongtask", *child_argv]
        self.processes = processes
        self.restart_backoff = restart_backoff
        self.max_backoff = max_backoff
        self.children = [_Child(i, backoff=restart_backoff) for i in range(processes)]
        self.received: list[int] = []
        self.signals = 0
        self.fatal: int | None = None
        self.preexec = _pdeathsig_preexec()

    # ------------------------------------------------------------- children
    def start(self, child: _Child) -> None:
        env = {
            **os.environ,
            "KONGTASK_PROCESS_INDEX": str(child.index),
            "KONGTASK_PROCESSES": str(self.processes),
        }
        child.proc = subprocess.Popen(
            self.argv, env=env, start_new_session=True, preexec_fn=self.preexec
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("child %d/%d started: pid %d", child.index + 1, self.processes, child.proc.pid)

    def send(self, sig: int) -> None:
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def on_signal(self, sig: int, _frame: FrameType | None) -> None:
        """Only note the signal: the loop forwards it, so a child being started
        while the signal arrives cannot miss it or get it twice."""
        self.received.append(sig)

    def forward_signals(self) -> None:
        """First signal: graceful stop of every child; later ones: forwarded again
        (force). SIGUSR1 is passed on and stops nothing: each child logs its state."""
        while self.received:
            sig = self.received.pop(0)
            if sig == _STATE_DUMP:
                log.info("received SIGUSR1: asking every child for its state")
                self.send(sig)
                continue
            self.signals += 1
            name = signal.Signals(sig).name
            if self.signals == 1:
                log.info("received %s: stopping the children gracefully", name)
            else:
                log.warning("received %s again: children stop forcefully", name)
            for child in self.children:
                child.restart_at = None
            self.send(sig)

    def reap(self, child: _Child) -> None:
        """Handle a child that has exited: log it, and restart it or stop everything."""
        assert child.proc is not None
        code = _exit_code(child.proc.returncode)
        pid = child.proc.pid
        child.proc = None
        child.exit_code = code
        ran = time.monotonic() - child.started_at
        stopping = self.signals > 0 or self.fatal is not None
        log.info(
            "child %d/%d (pid %d) exited with code %d after %.1fs",
            child.index + 1,
            self.processes,
            pid,
            code,
            ran,
        )
        if stopping and code in _SIGNALLED:
            # Killed by the forwarded signal before it installed its handlers:
            # it had not fetched a job yet, so this is a clean stop.
            child.exit_code = 0
            return
        if stopping or code == 0:
            return
        if code in FATAL_EXIT_CODES:
            log.error(
                "child exit code %d cannot be fixed by a restart; stopping all children", code
            )
            self.fatal = code
            for other in self.children:
                other.restart_at = None
            self.send(signal.SIGTERM)
            return
        if ran >= STABLE_AFTER:
            child.backoff = self.restart_backoff
        delay = child.backoff
        child.backoff = min(child.backoff * 2, self.max_backoff)
        child.restart_at = time.monotonic() + delay
        log.warning("restarting child %d/%d in %.1fs", child.index + 1, self.processes, delay)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        for child in self.children:
            self.start(child)
        while True:
            self.forward_signals()
            now = time.monotonic()
            alive = 0
            for child in self.children:
                if child.proc is not None:
                    if child.proc.poll() is None:
                        alive += 1
                        continue
                    self.reap(child)
                if (
                    child.restart_at is not None
                    and child.restart_at <= now
                    and not self.signals
                    and self.fatal is None
                ):
                    self.start(child)
                    alive += 1
                elif child.restart_at is not None:
                    alive += 1  # waiting to be restarted
            if alive == 0:
                break
            time.sleep(_POLL)
        if self.fatal is not None:
            return self.fatal
        codes = [c.exit_code or 0 for c in self.children]
        failed = [code for code in codes if code != 0]
        return failed[0] if failed else 0


def supervise(
    child_argv: list[str],
    processes: int,
    *,
    restart_backoff: float = 0.5,
    max_backoff: float = 30.0,
) -> int:
    """Run ``processes`` children ``python -m kongtask *child_argv`` until they stop.

    Returns the exit code for the supervisor: 0 when every child exited
    cleanly (after SIGINT/SIGTERM, or on its own, as with ``--once``); a
    code from :data:`FATAL_EXIT_CODES` when a child exited with it; else the
    first non-zero code a child ended with during shutdown. Must run in the
    main thread (it installs signal handlers; the previous ones are restored
    on return).
    """
    if processes < 1:
        raise ValueError(f"processes: must be >= 1, got {processes}")
    if restart_backoff <= 0 or max_backoff < restart_backoff:
        raise ValueError("need 0 < restart_backoff <= max_backoff")
    supervisor = _Supervisor(list(child_argv), processes, restart_backoff, max_backoff)
    handled = (signal.SIGINT, signal.SIGTERM, *([_STATE_DUMP] if _STATE_DUMP else []))
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in handled}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Only reached with children alive if run() itself raised: do not orphan them.
        for child in supervisor.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()


__all__ = [
    "FATAL_EXIT_CODES",
    "STABLE_AFTER",
    "resolve_processes",
    "supervise",
    "without_processes",
]
