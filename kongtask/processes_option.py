"""The ``--processes`` option of ``kongtask run``: its value, and the command line
the children get without it.

Apart from :mod:`kongtask.supervisor`, which only a ``--processes`` run needs:
every ``kongtask run`` parses the option, and importing the supervisor to do
so cost a millisecond of start-up.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def resolve_processes(value: str) -> int:
    """``--processes`` value: ``auto`` (the CPUs this process may use) or an int >= 1.

    Raises :class:`argparse.ArgumentTypeError`, so it can be an argparse
    ``type=`` and the message reaches the user as is. ``auto`` counts the
    CPUs in this process's affinity mask where the OS has one (containers and
    ``taskset`` restrict it), else ``os.cpu_count()``.
    """
    text = str(value).strip().lower()
    if text == "auto":
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--processes: expected 'auto' or a whole number >= 1, got {value!r}"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--processes: must be >= 1, got {number}")
    return number


def without_processes(argv: Sequence[str]) -> list[str]:
    """``argv`` minus its ``--processes`` option, for the children's command line.

    Removes ``--processes N``, ``--processes=N`` and the abbreviations
    argparse accepts (``--proc 4``; at least ``--pr``, since ``--p`` is
    ambiguous with ``--poll-interval``); everything else, including global
    options before the command, is passed on unchanged.
    """
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        name, eq, _ = token.partition("=")
        if len(name) >= 4 and "--processes".startswith(name):
            i += 1 if eq else 2
            continue
        if token == "--":  # positional arguments follow; nothing to strip there
            out.extend(items[i:])
            break
        out.append(token)
        i += 1
    return out


__all__ = ["resolve_processes", "without_processes"]
