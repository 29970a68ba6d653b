"""``argparse`` without the import it makes on every parser: a faster ``kongtask run``.

The stock help formatter asks ``shutil`` for the terminal width, and argparse
builds a formatter for every ``add_argument`` to check the argument, so the
first option of the first parser imports ``shutil`` (and with it ``bz2``,
``lzma`` and ``fnmatch``): 2-4 ms of every command's start, measured in the
bench's worker child, for a width that only ``--help`` uses. This formatter
reads the width the same way (``COLUMNS``, else the terminal, else 80)
without that import.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` would say."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, its width found without importing ``shutil``."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog,
            indent_increment,
            max_help_position,
            terminal_columns() - 2 if width is None else width,
        )


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` using :class:`HelpFormatter` by default; its
    subcommands' parsers are of this class too (argparse makes them so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
