"""``kongtask jobs | retry | remove | unlock``: look at the queue and repair it.

The commands are thin: reading uses the statements of
:mod:`kongtask.queries.inspect` (counts, oldest due job, failed jobs,
workers), writing goes through :class:`WorkerUtils` and so through the
schema's own admin functions, which leave alone jobs a live worker holds.

Three rooms: :mod:`.args` adds the subcommands to the CLI's parser,
:mod:`.commands` runs them against the database, :mod:`.render` turns what
they read into a table or JSON. ``cli`` imports this package, never the
reverse: ``register`` takes the connection-argument helper as a parameter.

Exit codes besides the CLI's usual ones: :data:`EXIT_SKIPPED` (5) when a
write command could not act on every job or worker it was given (not found,
or locked by a live worker), so scripts can tell "done" from "partly done".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes
from .args import COMMAND_NAMES, register

if TYPE_CHECKING:
    from ..queries.inspect import queue_counts_sql
    from .commands import EXIT_OK, EXIT_SKIPPED, run_command
    from .render import format_table

#: Loaded when a command runs, not when the CLI builds its parser: ``kongtask
#: run`` needs only :func:`register` from this package (the rest, with the
#: client it writes through, was a fifth of that command's start-up).
_LAZY = {
    "EXIT_OK": ".commands",
    "EXIT_SKIPPED": ".commands",
    "run_command": ".commands",
    "format_table": ".render",
    "queue_counts_sql": "..queries.inspect",
}


__getattr__, __dir__ = attributes(__name__, _LAZY, globals())

__all__ = [
    "COMMAND_NAMES",
    "EXIT_OK",
    "EXIT_SKIPPED",
    "format_table",
    "queue_counts_sql",
    "register",
    "run_command",
]
