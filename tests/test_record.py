"""The value classes that replaced ``@dataclass`` on the worker's import path
behave as the dataclasses did: keyword and positional construction, value
equality, ``repr`` in field order, frozen and hashable where they were."""

from __future__ import annotations

import pytest

import kongtask
from kongtask.errors import ConfigError
from kongtask.migrate import KONGTASK_MIGRATIONS, MigrationResult
from kongtask.options import build_options


def test_worker_options_defaults_compare_by_value_and_own_their_kwargs() -> None:
    a, b = kongtask.WorkerOptions(), kongtask.WorkerOptions()
    assert a == b
    assert a.concurrency == 10 and a.poll_interval == 2.0 and a.migrate is True
    a.connect_kwargs["timeout"] = 5
    assert b.connect_kwargs == {}  # one dict per instance, as default_factory gave
    assert a != b
    assert kongtask.WorkerOptions(3) == kongtask.WorkerOptions(concurrency=3)
    with pytest.raises(TypeError):
        hash(a)  # mutable: unhashable, as an eq dataclass is


def test_worker_options_repr_follows_field_order() -> None:
    text = repr(kongtask.WorkerOptions(concurrency=7, schema="s"))
    assert text.startswith("WorkerOptions(concurrency=7, schema='s', poll_interval=2.0,")
    assert "connect_kwargs={}" in text


def test_build_options_names_unknown_options_and_accepts_every_field() -> None:
    with pytest.raises(ConfigError, match="unknown option\\(s\\): bogus, nope"):
        build_options(nope=1, bogus=2)
    every = {
        name: getattr(kongtask.WorkerOptions(), name) for name in kongtask.WorkerOptions.__slots__
    }
    assert build_options(**every) == kongtask.WorkerOptions()


def test_migration_result_is_frozen_hashable_and_keeps_its_defaults() -> None:
    result = MigrationResult("s", False, 19)
    assert result.kongtask_version == len(KONGTASK_MIGRATIONS)
    assert result.kongtask_applied == 0
    assert result == MigrationResult(schema="s", installed=False, version=19)
    assert {result, MigrationResult("s", False, 19)} == {result}
    assert result != MigrationResult("s", True, 19)
    with pytest.raises(AttributeError, match="frozen"):
        result.version = 20  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del result.schema  # type: ignore[misc]
    assert repr(result) == (
        "MigrationResult(schema='s', installed=False, version=19, "
        f"kongtask_version={len(KONGTASK_MIGRATIONS)}, kongtask_applied=0)"
    )
    assert result.action == "none"
