"""The crontab text format: graphile-worker 0.17's, plus macros, ``tz`` and step forms.

Every error is a :class:`~kongtask.errors.CronSyntaxError` carrying the
1-based line and column of the offending text and saying what was expected
there; :func:`load_crontab` adds the file's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import orjson

from .._core import schedule as _schedule
from ..errors import CronSyntaxError, InvalidJobSpec
from .fields import MACROS, compiled, parse_time_phrase, unknown_macro, zone_named
from .model import CronItem, CronSchedule

# graphile-worker's accepted shapes (cronConstants), so a crontab that works
# in Node works here and vice versa. Compiled on first use (``compiled``).
_TASK = r"[_a-zA-Z][_a-zA-Z0-9:/_-]*"
_ID = r"[_a-zA-Z][-_a-zA-Z0-9]*"
_QUEUE = r"[-a-zA-Z0-9_:]+"
_UNSIGNED = r"[0-9]+"
_SIGNED = r"-?[0-9]+"
_TEXT_JOB_KEY_MODES = ("replace", "preserve_run_at")
_OPTION_KEYS = ("id", "fill", "max", "queue", "jobKey", "jobKeyMode", "priority", "tz")
_JSON5_ERROR = r"^<string>:(\d+) (.*) at column (\d+)$"


def _tokens(line: str) -> list[tuple[int, str]]:
    """(0-based start, text) of each whitespace-separated token."""
    return [(m.start(), m.group()) for m in re.finditer(r"\S+", line)]


class _Line:
    """Parses one crontab line; every error names this line and a column."""

    def __init__(self, text: str, number: int) -> None:
        self.text = text
        self.number = number

    def error(self, message: str, index: int) -> CronSyntaxError:
        """``index`` is 0-based in the line; reported 1-based."""
        return CronSyntaxError(message, line=self.number, column=index + 1)

    def parse(self) -> tuple[CronItem, int]:
        """The item and the 0-based column its identifier came from."""
        text = self.text
        tokens = _tokens(text)
        start, first = tokens[0]
        if first.startswith("@"):
            expression = MACROS.get(first)
            if expression is None:
                raise self.error(unknown_macro(first), start)
            parsed = _schedule.parse_cron(expression)
            if len(tokens) < 2:
                raise self.error(f"expected a task name after {first}", len(text.rstrip()))
            command_at = tokens[1][0]
        else:
            for kind, (offset, field_text) in enumerate(tokens[:5]):
                try:
                    _schedule.parse_field(field_text, kind)
                except CronSyntaxError as exc:
                    column = offset + (exc.column - 1 if exc.column else 0)
                    raise self.error(exc.message, column) from None
            end = len(text.rstrip())
            if len(tokens) < 5:
                raise self.error(
                    "expected 5 time fields (minute hour day-of-month month day-of-week) "
                    f"then a task name, got only {len(tokens)} field(s)",
                    end,
                )
            if len(tokens) == 5:
                raise self.error("expected a task name after the 5 time fields", end)
            last_offset, last_text = tokens[4]
            parsed = _schedule.parse_cron(text[start : last_offset + len(last_text)])
            if parsed.never:
                raise self.error(
                    f"the time fields {parsed.source!r} match no date at all, so this line "
                    "would never fire: expected a day of month that exists in the month(s)",
                    tokens[2][0],
                )
            command_at = tokens[5][0]
        return self._command(parsed, command_at)

    def _command(self, parsed: CronSchedule, at: int) -> tuple[CronItem, int]:
        text = self.text
        match = compiled(_TASK).match(text, at)
        if not match:
            raise self.error(
                f"invalid task name starting {text[at:].split()[0]!r}: expected a letter or '_' "
                "followed by letters, digits, '_', ':', '/' or '-'",
                at,
            )
        task = match.group()
        position = match.end()
        if position < len(text) and not text[position].isspace():
            char = text[position]
            if char in "?{":
                raise self.error(f"expected a space between the task name and {char!r}", position)
            raise self.error(
                f"unexpected {char!r} in task name {task + char!r}: expected letters, digits, "
                "'_', ':', '/' or '-', then a space before '?options' or a '{payload}'",
                position,
            )
        options: dict[str, tuple[str, int]] = {}
        payload: dict[str, Any] | None = None
        position = self._skip_space(position)
        if position < len(text) and text[position] == "?":
            options_end = position + 1
            while options_end < len(text) and not text[options_end].isspace():
                options_end += 1
            if options_end == position + 1:
                raise self.error("expected options after '?', such as ?id=name&fill=1h", position)
            options = self._options(position + 1, options_end)
            position = self._skip_space(options_end)
        if position < len(text):
            if text[position] != "{":
                after = "after the options" if options else "after the task name"
                raise self.error(
                    f"unexpected {text[position:].split()[0]!r} {after}: expected "
                    + ("a '{...}' payload" if options else "'?options' or a '{...}' payload"),
                    position,
                )
            payload = self._payload(position)
        return self._item(task, at, parsed, options, payload)

    def _skip_space(self, position: int) -> int:
        text = self.text
        while position < len(text) and text[position].isspace():
            position += 1
        return position

    def _options(self, begin: int, end: int) -> dict[str, tuple[str, int]]:
        """``key=value&...`` (URL-decoded like Node's querystring) -> {key: (value, column)}."""
        found: dict[str, tuple[str, int]] = {}
        position = begin
        for piece in self.text[begin:end].split("&"):
            here = position
            position += len(piece) + 1
            if not piece:
                continue
            raw_key, equals, raw_value = piece.partition("=")
            key = unquote_plus(raw_key)
            if key not in _OPTION_KEYS:
                raise self.error(
                    f"unknown option {key!r}: expected one of {', '.join(_OPTION_KEYS)}", here
                )
            if key in found:
                raise self.error(f"option {key!r} is given more than once", here)
            value = unquote_plus(raw_value)
            value_at = here + len(raw_key) + len(equals)
            if not value:
                raise self.error(f"option {key!r} needs a value: expected {key}=...", value_at)
            found[key] = (value, value_at)
        return found

    def _payload(self, at: int) -> dict[str, Any]:
        source = self.text[at:].rstrip()
        if not source.endswith("}"):
            raise self.error(
                "expected the payload to end with '}' at the end of the line", len(source) + at
            )
        try:
            value = orjson.loads(source)
        except orjson.JSONDecodeError:
            value = self._json5(source, at)
        if not isinstance(value, dict):  # pragma: no cover - braces always give an object
            raise self.error("expected the payload to be a {...} object", at)
        try:
            orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise self.error(f"payload cannot be stored as JSON: {exc}", at) from None
        return value

    def _json5(self, source: str, at: int) -> Any:
        try:
            import json5
        except ImportError:
            raise self.error(
                "payload is not strict JSON, and reading JSON5 needs the json5 package: "
                "pip install 'kongtask[cron]'",
                at,
            ) from None
        try:
            return json5.loads(source)
        except ValueError as exc:
            message = str(exc)
            match = compiled(_JSON5_ERROR).match(message)
            if match and match.group(1) == "1":
                raise self.error(
                    f"invalid JSON5 payload: {match.group(2)}; expected a JSON5 object",
                    at + int(match.group(3)) - 1,
                ) from None
            raise self.error(f"invalid JSON5 payload: {message}", at) from None

    def _item(
        self,
        task: str,
        task_at: int,
        parsed: CronSchedule,
        options: dict[str, tuple[str, int]],
        payload: dict[str, Any] | None,
    ) -> tuple[CronItem, int]:
        values: dict[str, Any] = {}
        identifier_at = task_at
        for key, (value, at) in options.items():
            name, read = _OPTION_READERS[key]
            values[name] = read(self, value, at)
            if key == "id":
                identifier_at = at - len("id=")
        if values.get("job_key") and not values.get("job_key_mode"):
            values["job_key_mode"] = "replace"
        values.setdefault("identifier", task)
        try:
            item = CronItem(task=task, schedule=parsed, payload=payload, **values)
        except InvalidJobSpec as exc:  # pragma: no cover - the checks above come first
            raise self.error(str(exc), task_at) from None
        return item, identifier_at

    # One reader per ``?option``: the value checked as graphile-worker checks it.
    def _read_id(self, value: str, at: int) -> str:
        if not compiled(_ID).fullmatch(value):
            raise self.error(
                f"invalid id {value!r}: expected a letter or '_' followed by letters, "
                "digits, '_' or '-'",
                at,
            )
        return value

    def _read_fill(self, value: str, at: int) -> float:
        try:
            return parse_time_phrase(value)
        except CronSyntaxError as exc:
            raise self.error(f"fill: {exc.message}", at + (exc.column or 1) - 1) from None

    def _read_max(self, value: str, at: int) -> int:
        if not compiled(_UNSIGNED).fullmatch(value) or not 1 <= int(value) <= 32767:
            raise self.error(
                f"invalid max {value!r}: expected a whole number of attempts, 1 to 32767", at
            )
        return int(value)

    def _read_queue(self, value: str, at: int) -> str:
        if not compiled(_QUEUE).fullmatch(value) or len(value) > 128:
            raise self.error(
                f"invalid queue {value!r}: expected up to 128 letters, digits, '-', '_' or ':'",
                at,
            )
        return value

    def _read_job_key(self, value: str, at: int) -> str:
        if len(value) > 512 or "\0" in value:
            raise self.error("invalid jobKey: expected 1 to 512 characters without NUL", at)
        return value

    def _read_job_key_mode(self, value: str, at: int) -> str:
        if value not in _TEXT_JOB_KEY_MODES:
            raise self.error(
                f"invalid jobKeyMode {value!r}: expected replace or preserve_run_at", at
            )
        return value

    def _read_priority(self, value: str, at: int) -> int:
        if not compiled(_SIGNED).fullmatch(value) or not -32768 <= int(value) <= 32767:
            raise self.error(
                f"invalid priority {value!r}: expected a whole number, -32768 to 32767", at
            )
        return int(value)

    def _read_tz(self, value: str, at: int) -> tzinfo:
        zone = zone_named(value)
        if zone is None:
            raise self.error(
                f"unknown time zone {value!r}: expected an IANA name such as Europe/Paris or UTC",
                at,
            )
        return zone


#: ``?option`` -> (CronItem field, reader); its keys are every option there is.
_OPTION_READERS: dict[str, tuple[str, Callable[[_Line, str, int], Any]]] = {
    "id": ("identifier", _Line._read_id),
    "fill": ("backfill_period", _Line._read_fill),
    "max": ("max_attempts", _Line._read_max),
    "queue": ("queue_name", _Line._read_queue),
    "jobKey": ("job_key", _Line._read_job_key),
    "jobKeyMode": ("job_key_mode", _Line._read_job_key_mode),
    "priority": ("priority", _Line._read_priority),
    "tz": ("tz", _Line._read_tz),
}
assert tuple(_OPTION_READERS) == _OPTION_KEYS


def parse_crontab(text: str) -> list[CronItem]:
    """Parse crontab text (graphile-worker's format plus macros and ``tz``) into items.

    Lines are ``MIN HOUR DOM MON DOW task ?opts {payload}``; blank lines and
    lines starting with ``#`` are skipped (there are no trailing comments,
    since ``#`` may occur in a payload). Identifiers must be unique: a
    duplicate is an error on its second line that names the first.
    """
    if not isinstance(text, str):
        raise TypeError(f"crontab must be text, got {type(text).__name__}")
    items: list[CronItem] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if number == 1 and line.startswith("\ufeff"):
            line = " " + line[1:]  # a BOM; keep the columns where an editor shows them
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        item, identifier_at = _Line(line, number).parse()
        earlier = first_seen.get(item.identifier)
        if earlier is not None:
            raise CronSyntaxError(
                f"duplicate identifier {item.identifier!r}, already used on line {earlier}: "
                "expected a unique identifier per line (add ?id=... to tell them apart)",
                line=number,
                column=identifier_at + 1,
            )
        first_seen[item.identifier] = number
        items.append(item)
    return items


def load_crontab(path: str | Path) -> list[CronItem]:
    """Read and parse a crontab file (UTF-8).

    A syntax error names the file as well as the line and column
    (``FILE:LINE:COLUMN: message``), since a worker's log does not otherwise
    say which crontab it read. A file that cannot be read raises ``OSError``
    (or ``UnicodeDecodeError``) as :meth:`Path.read_text` does.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return parse_crontab(text)
    except CronSyntaxError as exc:
        raise exc.in_file(str(path)) from None


def as_cron_items(crontab: str | Sequence[CronItem] | None) -> list[CronItem]:
    """Whatever the ``crontab`` option holds, as a list of items: text is parsed,
    items are checked for unique identifiers, None is no cron at all."""
    if crontab is None:
        return []
    if isinstance(crontab, str):
        return parse_crontab(crontab)
    if isinstance(crontab, CronItem):
        crontab = [crontab]
    items = list(crontab)
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, CronItem):
            raise TypeError(
                f"crontab item {index} must be a CronItem (CronItem.create(...)), "
                f"got {type(item).__name__}"
            )
        earlier = first_seen.setdefault(item.identifier, index)
        if earlier != index:
            raise CronSyntaxError(
                f"duplicate identifier {item.identifier!r} in crontab items {earlier} and "
                f"{index}: expected unique identifiers (pass identifier=... to tell them apart)"
            )
    return items
