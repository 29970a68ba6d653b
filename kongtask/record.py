"""Value classes for the modules every worker imports, without ``@dataclass``.

``@dataclass`` writes ``__init__``, ``__repr__`` and ``__eq__`` as source text
and compiles each with ``exec`` when the class is created: 0.4 ms for a
two-field class and 1.5 ms for ``WorkerOptions``' 22 fields, measured on the
2-core benchmark machine (CPython 3.11). Four such classes sat on the import
path of ``kongtask run``, about 3 ms of a start that is measured against the
bare interpreter. These bases give the same ``repr`` and equality from
``__slots__`` at no import cost; each class writes its own ``__init__``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Record:
    """Fields are the ``__slots__`` of the class, in the order ``repr`` shows them
    (hence the ``noqa: RUF023`` beside each); compared by value.

    Mutable, so unhashable, as a dataclass with ``eq=True`` is.
    """

    __slots__: ClassVar[tuple[str, ...]] = ()
    __hash__: ClassVar[None] = None  # type: ignore[assignment]
    #: Fields ``repr`` leaves out (a DSN that may carry a password).
    _repr_hidden: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if name not in self._repr_hidden
        )
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()


class FrozenRecord(Record):
    """A :class:`Record` whose fields cannot change after ``__init__``; hashable.

    ``__init__`` sets its fields with ``object.__setattr__``.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())
