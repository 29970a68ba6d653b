"""kongtask: a fast PostgreSQL job queue for Python, schema-compatible with graphile-worker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import IMPLEMENTATION
from ._version import __version__
from .errors import (
    ConfigError,
    CronSyntaxError,
    InvalidJobSpec,
    KongtaskError,
    SchemaError,
    SchemaMissing,
    SchemaTooNew,
    SchemaTooOld,
    TaskLoadError,
)
from .events import EventEmitter
from .helpers import Helpers
from .logsetup import configure_logging
from .migrate import MigrationResult
from .tasks import TaskList, load_tasks
from .worker import Runner, WorkerOptions, run, run_once

if TYPE_CHECKING:
    from .client import CLEANUP_TASKS, Job, JobSpec, WorkerUtils, quick_add_job
    from .crontab import CronItem, parse_crontab

#: Names whose modules load on first use (PEP 562): a worker process that never
#: adds a job from outside a handler, or has no crontab, never pays for them
#: (together about a tenth of ``import kongtask``).
_LAZY = {
    "CLEANUP_TASKS": "client",
    "Job": "client",
    "JobSpec": "client",
    "WorkerUtils": "client",
    "quick_add_job": "client",
    "CronItem": "crontab",
    "parse_crontab": "crontab",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CLEANUP_TASKS",
    "IMPLEMENTATION",
    "ConfigError",
    "CronItem",
    "CronSyntaxError",
    "EventEmitter",
    "Helpers",
    "InvalidJobSpec",
    "Job",
    "JobSpec",
    "KongtaskError",
    "MigrationResult",
    "Runner",
    "SchemaError",
    "SchemaMissing",
    "SchemaTooNew",
    "SchemaTooOld",
    "TaskList",
    "TaskLoadError",
    "WorkerOptions",
    "WorkerUtils",
    "__version__",
    "configure_logging",
    "load_tasks",
    "parse_crontab",
    "quick_add_job",
    "run",
    "run_once",
]
