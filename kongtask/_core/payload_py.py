"""Pure-Python twin of ``kongtask._core.payload``: job specs -> the JSON for ``add_jobs``.

The SQL side reads the batch with ``json_populate_recordset(null::job_spec, $1::json)``,
so the whole batch is one JSON array whose keys are the ``job_spec`` columns
(``identifier, payload, queue_name, run_at, max_attempts, job_key, priority,
flags``). Keys whose value is ``None`` are left out (the column is then NULL);
``payload`` is always present, ``{}`` when it is ``None``, as graphile-worker does.

Validation mirrors the database's own constraints (identifier and queue name at
most 128 characters, job key 1..512, smallint ranges) so that a bad job is
reported with the field that is wrong, before a round trip, and never half a
batch into a transaction. Errors are reported in order: spec by spec, and within
a spec the fields in signature order, then the payload.

``run_at`` is written as RFC 3339 in UTC (``...+00:00``); a naive datetime is
taken to be UTC already. Converting (instead of keeping the caller's offset)
keeps the text valid RFC 3339 even for historic zone offsets with seconds,
which ``isoformat`` would print as ``+00:19:32``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson

from kongtask.errors import InvalidJobSpec

__all__ = [
    "FIELD_NAMES",
    "JOB_KEY_MODES",
    "JobSpec",
    "encode_payload",
    "encode_run_at",
    "encode_specs",
    "validate_field",
    "validate_job",
]

JOB_KEY_MODES: tuple[str, ...] = ("replace", "preserve_run_at", "unsafe_dedupe")

_SPEC_KEYS: tuple[str, ...] = (
    "identifier",
    "payload",
    "queue_name",
    "run_at",
    "max_attempts",
    "job_key",
    "priority",
    "flags",
)
_SPEC_KEY_SET = frozenset(_SPEC_KEYS)
_UTC = timezone.utc
_isoformat = datetime.isoformat
_dumps = orjson.dumps
_EncodeErrors = (TypeError, orjson.JSONEncodeError)

MAX_IDENTIFIER = 128
MAX_QUEUE_NAME = 128
MAX_JOB_KEY = 512
SMALLINT_MIN = -32768
SMALLINT_MAX = 32767


class JobSpec:
    """One job for :func:`encode_specs` / ``add_jobs``; validated when encoded.

    Construction does no checking so that building 100,000 specs costs no more
    than building 100,000 tuples; ``encode_specs`` validates each one and names
    the spec and field that is wrong.
    """

    __slots__ = _SPEC_KEYS

    identifier: Any
    payload: Any
    queue_name: Any
    run_at: Any
    max_attempts: Any
    job_key: Any
    priority: Any
    flags: Any

    def __init__(
        self,
        identifier: str,
        payload: Any = None,
        queue_name: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        job_key: str | None = None,
        priority: int | None = None,
        flags: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        self.identifier = identifier
        self.payload = payload
        self.queue_name = queue_name
        self.run_at = run_at
        self.max_attempts = max_attempts
        self.job_key = job_key
        self.priority = priority
        self.flags = flags

    def __repr__(self) -> str:
        # The payload is left out on purpose: reprs end up in logs, payloads may
        # hold personal data.
        parts = [repr(self.identifier)]
        for name in _SPEC_KEYS[2:]:
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        return f"JobSpec({', '.join(parts)})"

    def _astuple(self) -> tuple[Any, ...]:
        return (
            self.identifier,
            self.payload,
            self.queue_name,
            self.run_at,
            self.max_attempts,
            self.job_key,
            self.priority,
            self.flags,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobSpec):
            return NotImplemented
        return self._astuple() == other._astuple()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


# --- validation ---------------------------------------------------------------------------


def _check_str(field: str, value: Any, max_len: int, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        expected = "a string or None" if optional else "a string"
        raise InvalidJobSpec(field, f"must be {expected}, got {type(value).__name__}")
    size = len(value)
    if size == 0:
        raise InvalidJobSpec(field, "must not be empty")
    if size > max_len:
        raise InvalidJobSpec(field, f"must be at most {max_len} characters, got {size}")
    if "\0" in value:
        raise InvalidJobSpec(field, "must not contain NUL characters")
    if not value.isascii() and not _is_utf8_encodable(value):
        raise InvalidJobSpec(field, "must not contain lone surrogates")


def _is_utf8_encodable(text: str) -> bool:
    """False for strings holding lone surrogates, which neither JSON nor PostgreSQL accept."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_int(field: str, value: Any, low: int, high: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidJobSpec(field, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidJobSpec(field, f"must be between {low} and {high}, got {value}")


def _check_flags(field: str, flags: Any) -> None:
    if flags is None:
        return
    if not isinstance(flags, (list, tuple)):
        raise InvalidJobSpec(field, f"must be a list of strings, got {type(flags).__name__}")
    for index, flag in enumerate(flags):
        if not isinstance(flag, str):
            raise InvalidJobSpec(field, f"item {index} must be a string, got {type(flag).__name__}")
        if not flag:
            raise InvalidJobSpec(field, f"item {index} must not be empty")
        if "\0" in flag:
            raise InvalidJobSpec(field, f"item {index} must not contain NUL characters")
        if not flag.isascii() and not _is_utf8_encodable(flag):
            raise InvalidJobSpec(field, f"item {index} must not contain lone surrogates")


# One rule per job field, called with the field name the error is to carry. They
# are the field-level validator: validate_field picks one by name, _check_fields
# (behind validate_job and encode_specs) runs them all in signature order.


def _check_identifier(field: str, value: Any) -> None:
    _check_str(field, value, MAX_IDENTIFIER, False)


def _check_queue_name(field: str, value: Any) -> None:
    _check_str(field, value, MAX_QUEUE_NAME, True)


def _check_run_at(field: str, value: Any) -> None:
    if value is not None and not isinstance(value, datetime):
        raise InvalidJobSpec(field, f"must be a datetime, got {type(value).__name__}")


def _check_max_attempts(field: str, value: Any) -> None:
    _check_int(field, value, 1, SMALLINT_MAX)


def _check_job_key(field: str, value: Any) -> None:
    _check_str(field, value, MAX_JOB_KEY, True)


def _check_job_key_mode(field: str, value: Any) -> None:
    if value is not None and value not in JOB_KEY_MODES:
        choices = ", ".join(repr(mode) for mode in JOB_KEY_MODES)
        raise InvalidJobSpec(field, f"must be one of {choices}, got {value!r}")


def _check_priority(field: str, value: Any) -> None:
    _check_int(field, value, SMALLINT_MIN, SMALLINT_MAX)


def _check_attempts(field: str, value: Any) -> None:
    _check_int(field, value, 0, SMALLINT_MAX)


_FIELD_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "identifier": _check_identifier,
    "queue_name": _check_queue_name,
    "run_at": _check_run_at,
    "max_attempts": _check_max_attempts,
    "job_key": _check_job_key,
    "job_key_mode": _check_job_key_mode,
    "priority": _check_priority,
    "flags": _check_flags,
    "attempts": _check_attempts,
}
#: The job fields :func:`validate_field` knows: ``add_job``'s arguments in signature
#: order, then ``attempts``, which only ``reschedule_jobs`` sets.
FIELD_NAMES: tuple[str, ...] = tuple(_FIELD_CHECKS)


def validate_field(name: str, value: Any, *, field: str | None = None) -> None:
    """Raises :class:`InvalidJobSpec` if ``value`` is not a valid job field ``name``.

    For callers that take one or two job fields rather than a whole job
    (``reschedule_jobs``, ``remove_job``, cron items). ``name`` is one of
    :data:`FIELD_NAMES`; the error's ``field`` is ``field`` when given (a caller
    whose argument has another name, such as a cron item's ``task``), else ``name``.
    ``None`` passes for every field but ``identifier``, as in ``add_job``.
    """
    check = _FIELD_CHECKS.get(name) if isinstance(name, str) else None
    if check is None:
        raise ValueError(f"unknown job field {name!r}; expected one of {', '.join(FIELD_NAMES)}")
    if field is None:
        field = name
    elif not isinstance(field, str):
        raise TypeError(f"field must be a string, got {type(field).__name__}")
    check(field, value)


def _check_fields(
    prefix: str,
    identifier: Any,
    queue_name: Any,
    run_at: Any,
    max_attempts: Any,
    job_key: Any,
    job_key_mode: Any,
    priority: Any,
    flags: Any,
) -> None:
    """Every field rule of a job, raising for the first bad field in signature order."""
    _check_identifier(prefix + "identifier", identifier)
    _check_queue_name(prefix + "queue_name", queue_name)
    _check_run_at(prefix + "run_at", run_at)
    _check_max_attempts(prefix + "max_attempts", max_attempts)
    _check_job_key(prefix + "job_key", job_key)
    _check_job_key_mode(prefix + "job_key_mode", job_key_mode)
    _check_priority(prefix + "priority", priority)
    _check_flags(prefix + "flags", flags)


def validate_job(
    identifier: Any,
    queue_name: Any = None,
    run_at: Any = None,
    max_attempts: Any = None,
    job_key: Any = None,
    job_key_mode: Any = None,
    priority: Any = None,
    flags: Any = None,
) -> None:
    """Raises :class:`InvalidJobSpec` for the first argument ``add_job`` would reject.

    The field rules of :func:`validate_field`, all of them, in signature order.
    """
    _check_fields(
        "", identifier, queue_name, run_at, max_attempts, job_key, job_key_mode, priority, flags
    )


# --- encoding -----------------------------------------------------------------------------


def _payload_bytes(field: str, payload: Any) -> bytes:
    if payload is None:
        return b"{}"
    try:
        return _dumps(payload)
    except _EncodeErrors as exc:
        raise InvalidJobSpec(field, f"is not JSON-serialisable: {exc}") from None


def encode_payload(payload: Any) -> str:
    """JSON text of one payload (``None`` -> ``"{}"``, as graphile-worker stores it)."""
    return _payload_bytes("payload", payload).decode()


def encode_run_at(run_at: Any) -> datetime | None:
    """A naive ``run_at`` is taken as UTC (returned aware); an aware one passes unchanged."""
    if run_at is None:
        return None
    _check_run_at("run_at", run_at)
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        return run_at.replace(tzinfo=_UTC)
    return run_at


def _run_at_text(field: str, run_at: datetime) -> str:
    """RFC 3339 in UTC; the same text the compiled twin writes from the fields."""
    if run_at.tzinfo is not _UTC:
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            run_at = run_at.replace(tzinfo=_UTC)
        else:
            try:
                run_at = run_at.astimezone(_UTC)
            except OverflowError:
                raise InvalidJobSpec(field, "is out of range when converted to UTC") from None
    return _isoformat(run_at)


def _specs_list(specs: Any) -> list[Any] | tuple[Any, ...]:
    if isinstance(specs, (list, tuple)):
        return specs
    if not isinstance(specs, (str, bytes, bytearray, dict)):
        try:
            return list(specs)
        except TypeError:
            pass
    raise InvalidJobSpec("specs", f"must be a list of JobSpec or dicts, got {type(specs).__name__}")


def _check_encoded(items: list[dict[str, Any]], upto: int) -> None:
    """Re-checks ``items[:upto]`` one by one and embeds each payload pre-encoded.

    The fast path checks field types and lengths inline and leaves lone
    surrogates and payload serialisation to the one final ``orjson.dumps``. When
    that fails, or when spec ``upto`` has a bad field, this finds the first
    error in the compiled twin's order (spec by spec; fields, then payload). On
    success every payload is an ``orjson.Fragment``, so a payload nested just
    below orjson's depth limit encodes exactly as it does on its own.
    """
    for index in range(upto):
        item = items[index]
        payload = item["payload"]
        if type(payload) is orjson.Fragment:
            continue
        prefix = f"specs[{index}]."
        _check_fields(
            prefix,
            item["identifier"],
            item.get("queue_name"),
            None,
            item.get("max_attempts"),
            item.get("job_key"),
            None,
            item.get("priority"),
            item.get("flags"),
        )
        item["payload"] = orjson.Fragment(_payload_bytes(prefix + "payload", payload))


def _check_spec(
    index: int,
    identifier: Any,
    queue_name: Any,
    run_at: Any,
    max_attempts: Any,
    job_key: Any,
    priority: Any,
    flags: Any,
) -> None:
    """Every field rule of ``specs[index]`` (a spec has no job_key_mode of its own)."""
    _check_fields(
        f"specs[{index}].",
        identifier,
        queue_name,
        run_at,
        max_attempts,
        job_key,
        None,
        priority,
        flags,
    )


def encode_specs(specs: Any) -> str:
    """The JSON array text for one ``add_jobs`` statement; validates every spec.

    Builds one small dict per spec and serialises the list in a single
    ``orjson.dumps``: in pure Python that beats writing the JSON by hand. If
    that call fails (a bad payload, or one nested too deep to survive two more
    levels), payloads are serialised one by one to find the culprit or to embed
    them as pre-encoded fragments, so the output never depends on which path ran.
    """
    seq = _specs_list(specs)
    out: list[dict[str, Any]] = []
    append = out.append
    empty: dict[str, Any] = {}
    key_set = _SPEC_KEY_SET
    for index, spec in enumerate(seq):
        if type(spec) is JobSpec or isinstance(spec, JobSpec):
            identifier = spec.identifier
            payload = spec.payload
            queue_name = spec.queue_name
            run_at = spec.run_at
            max_attempts = spec.max_attempts
            job_key = spec.job_key
            priority = spec.priority
            flags = spec.flags
        elif isinstance(spec, dict):
            if not key_set.issuperset(spec):
                _check_encoded(out, index)
                unknown = next(key for key in spec if key not in key_set)
                raise InvalidJobSpec(
                    f"specs[{index}]", f"unknown key {unknown!r}; expected {', '.join(_SPEC_KEYS)}"
                )
            if "identifier" not in spec:
                _check_encoded(out, index)
                raise InvalidJobSpec(f"specs[{index}].identifier", "is required")
            identifier = spec["identifier"]
            payload = spec.get("payload")
            queue_name = spec.get("queue_name")
            run_at = spec.get("run_at")
            max_attempts = spec.get("max_attempts")
            job_key = spec.get("job_key")
            priority = spec.get("priority")
            flags = spec.get("flags")
        else:
            _check_encoded(out, index)
            raise InvalidJobSpec(
                f"specs[{index}]", f"expected a JobSpec or a dict, got {type(spec).__name__}"
            )

        # Fast inline checks for the common shapes; anything they do not vouch
        # for goes through _check_fields, which raises with the precise message.
        if not (
            type(identifier) is str
            and 0 < len(identifier) <= MAX_IDENTIFIER
            and "\0" not in identifier
            and (
                queue_name is None
                or (
                    type(queue_name) is str
                    and 0 < len(queue_name) <= MAX_QUEUE_NAME
                    and "\0" not in queue_name
                )
            )
            and (run_at is None or isinstance(run_at, datetime))
            and (
                max_attempts is None
                or (type(max_attempts) is int and 1 <= max_attempts <= SMALLINT_MAX)
            )
            and (
                job_key is None
                or (
                    type(job_key) is str and 0 < len(job_key) <= MAX_JOB_KEY and "\0" not in job_key
                )
            )
            and (
                priority is None
                or (type(priority) is int and SMALLINT_MIN <= priority <= SMALLINT_MAX)
            )
            and flags is None
        ):
            try:
                _check_spec(
                    index, identifier, queue_name, run_at, max_attempts, job_key, priority, flags
                )
            except InvalidJobSpec:
                _check_encoded(out, index)
                raise

        item = {"identifier": identifier, "payload": empty if payload is None else payload}
        if queue_name is not None:
            item["queue_name"] = queue_name
        if run_at is not None:
            try:
                item["run_at"] = _run_at_text(f"specs[{index}].run_at", run_at)
            except InvalidJobSpec:
                _check_encoded(out, index)
                # The inline checks above leave lone surrogates to the final
                # dumps; a bad field still precedes run_at's range, as in the
                # compiled twin.
                _check_spec(
                    index, identifier, queue_name, run_at, max_attempts, job_key, priority, flags
                )
                raise
        if max_attempts is not None:
            item["max_attempts"] = max_attempts
        if job_key is not None:
            item["job_key"] = job_key
        if priority is not None:
            item["priority"] = priority
        if flags is not None:
            item["flags"] = flags
        append(item)
    try:
        return _dumps(out).decode()
    except _EncodeErrors:
        pass
    _check_encoded(out, len(out))
    return _dumps(out).decode()
