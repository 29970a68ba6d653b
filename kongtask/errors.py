"""Exceptions raised by kongtask.

A leaf module (it imports nothing from kongtask) so that ``_core`` can raise
the same exception types as the rest of the package.
"""

from __future__ import annotations


class KongtaskError(Exception):
    """Base class of every error kongtask raises on purpose."""


class InvalidJobSpec(KongtaskError, ValueError):
    """A job argument is wrong; ``field`` names which one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CronSyntaxError(KongtaskError, ValueError):
    """A crontab line or field cannot be parsed; says where and what was expected.

    With ``path`` (a crontab read from a file) the text is ``FILE:LINE:COLUMN:
    message``, the form editors jump to; without, ``line L, column C: message``.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        path: str | None = None,
    ) -> None:
        if path is not None:
            where = ":".join(str(part) for part in (path, line, column) if part is not None)
            where += ": "
        elif line is not None:
            where = f"line {line}"
            if column is not None:
                where += f", column {column}"
            where += ": "
        else:
            where = ""
        super().__init__(f"{where}{message}")
        self.line = line
        self.column = column
        self.message = message
        self.path = path

    def in_file(self, path: str) -> CronSyntaxError:
        """The same error, naming the file it was found in."""
        return CronSyntaxError(self.message, line=self.line, column=self.column, path=path)


class SchemaError(KongtaskError):
    """The database schema is not one this kongtask can use."""


class SchemaTooNew(SchemaError):
    """The database holds a breaking migration newer than this kongtask knows."""

    exit_code = 57


class SchemaMissing(SchemaError):
    """The schema is absent or holds no kongtask tables: ``migrate`` was never run on it.

    The usual first-hour mistake (a command before ``kongtask migrate``, or a
    mistyped ``-s``), so it gets one line naming the schema and the fix.
    """

    def __init__(self, schema: str) -> None:
        import shlex  # only this message needs it; every worker imports this module

        super().__init__(
            f"schema {schema!r} is not installed in this database: "
            f"run `kongtask migrate -s {shlex.quote(schema)}` first (or check the schema name)"
        )
        self.schema = schema


class SchemaTooOld(SchemaError):
    """A graphile-worker schema older than the one kongtask needs."""


class ConfigError(KongtaskError):
    """Configuration is missing or contradictory."""


class InstallIncomplete(KongtaskError, FileNotFoundError):
    """A file kongtask ships (its SQL) is not where the install put it."""


class TaskLoadError(KongtaskError):
    """A task module or directory could not be loaded."""


class JobTimeout(KongtaskError, TimeoutError):
    """A handler ran longer than its task's timeout; the job fails and retries."""
