"""The jobs list's filter and cursor, read from a query string and written back into links.

Every value is checked here and then only ever travels to PostgreSQL as a
bind parameter; which statement runs is chosen from the *presence* of each
filter (:class:`~kongtask.queries.dashboard.ListShape`), never from its text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from ..queries.dashboard import STATE_NAMES, ListShape
from .states import LABELS

#: Longest text a filter accepts: task and queue names are at most 128
#: characters, keys 512; error text is a substring, and a page's worth is plenty.
_MAX_TEXT = 512
#: Largest job id (bigint).
_MAX_ID = 2**63 - 1


class FilterError(ValueError):
    """A query-string value the jobs list cannot use; the message says which and why."""


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > _MAX_TEXT:
        raise FilterError(f"{name}: longer than {_MAX_TEXT} characters")
    if "\x00" in value:
        raise FilterError(f"{name}: contains a NUL character")
    return value


def parse_job_id(text: str, name: str = "id") -> int:
    """A job id from text, or FilterError naming ``name``."""
    text = text.strip().lstrip("#")
    if not text.isdigit():
        raise FilterError(f"{name}: not a job id: {text[:40]!r}")
    value = int(text)
    if not 1 <= value <= _MAX_ID:
        raise FilterError(f"{name}: out of range")
    return value


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs the list shows; None means "any"."""

    task: str | None = None
    queue: str | None = None
    state: str | None = None
    key: str | None = None
    error: str | None = None
    worker: str | None = None
    oldest_first: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> JobFilter:
        state = _text(params, "state")
        if state is not None and state not in STATE_NAMES:
            raise FilterError(f"state: expected one of {', '.join(STATE_NAMES)}")
        order = params.get("order") or "newest"
        if order not in ("newest", "oldest"):
            raise FilterError("order: expected newest or oldest")
        return cls(
            task=_text(params, "task"),
            queue=_text(params, "queue"),
            state=state,
            key=_text(params, "key"),
            error=_text(params, "error"),
            worker=_text(params, "worker"),
            oldest_first=order == "oldest",
        )

    @property
    def active(self) -> bool:
        return any(name != "order" for name in self.params())

    def shape(self, *, cursor: bool, backwards: bool = False, ids_only: bool = False) -> ListShape:
        """The statement shape; ``backwards`` walks towards the previous page."""
        return ListShape(
            task=self.task is not None,
            queue=self.queue is not None,
            state=self.state,
            key=self.key is not None,
            error=self.error is not None,
            worker=self.worker is not None,
            descending=self.oldest_first == backwards,
            cursor=cursor,
            ids_only=ids_only,
        )

    def values(self) -> list[str]:
        """The filter parameters, in the order :class:`ListShape` numbers them."""
        ordered = (self.task, self.queue, self.key, self.error, self.worker)
        return [v for v in ordered if v is not None]

    def params(self) -> dict[str, str]:
        """This filter as query-string parameters (only those set)."""
        out = {
            name: value
            for name, value in (
                ("task", self.task),
                ("queue", self.queue),
                ("state", self.state),
                ("key", self.key),
                ("error", self.error),
                ("worker", self.worker),
            )
            if value is not None
        }
        if self.oldest_first:
            out["order"] = "oldest"
        return out

    def query(self, **extra: Any) -> str:
        """``?task=…&state=…`` plus ``extra`` (None values dropped); ``""`` when empty."""
        params = {**self.params(), **{k: str(v) for k, v in extra.items() if v is not None}}
        return "?" + urlencode(params) if params else ""

    def with_state(self, state: str | None) -> JobFilter:
        return replace(self, state=state)

    def describe(self) -> str:
        """``task send_email, state failed``; ``every job in the queue`` for no filter."""
        parts = [
            f"{name} {LABELS[value] if name == 'state' else value}"
            for name, value in self.params().items()
            if name != "order"
        ]
        return ", ".join(parts) if parts else "every job in the queue"

    def scope(self) -> str:
        """What an action on this filter acts on, in words."""
        return f"every job matching {self.describe()}" if self.active else "every job in the queue"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: after an id (the next page) or before one (the previous)."""

    after: int | None = None
    before: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Cursor:
        after = params.get("after")
        before = params.get("before")
        if after and before:
            raise FilterError("after/before: give one of them, not both")
        return cls(
            after=parse_job_id(after, "after") if after else None,
            before=parse_job_id(before, "before") if before else None,
        )
