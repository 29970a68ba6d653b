"""Logging for programs that have not set it up: the CLI's format, one call.

kongtask logs through the standard ``logging`` module and, as a library,
configures nothing by itself. A program that never configured logging would
then show none of it (Python prints only warnings, unformatted, without a
handler), so the Quick start's worker looked dead. ``configure_logging()`` is
the one line such a program adds; a program with its own logging setup keeps it.
"""

from __future__ import annotations

import logging
import os

from .errors import ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int | None = None) -> None:
    """Log to stderr at ``level`` (default ``KONGTASK_LOG_LEVEL``, else INFO).

    Does nothing to a root logger that already has handlers (the program's own
    setup wins), as :func:`logging.basicConfig` does.
    """
    if level is None:
        level = os.environ.get("KONGTASK_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = level.upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ConfigError(f"log level: {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    logging.basicConfig(level=level, format=FORMAT)
