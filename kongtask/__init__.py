"""kongtask: a fast PostgreSQL job queue for Python, schema-compatible with graphile-worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from .lazy import attributes
from .logsetup import configure_logging
from .migrate import MigrationResult
from .tasks import TaskList, load_tasks
from .worker import Runner, WorkerOptions, run, run_once

if TYPE_CHECKING:
    from .client import CLEANUP_TASKS, Job, JobSpec, WorkerUtils, quick_add_job
    from .crontab import CronItem, parse_crontab

#: Names whose modules load on first use (PEP 562): a worker process that never
#: adds a job from outside a handler, or has no crontab, never pays for them
#: (with the inspect commands and the embedded server, ``import kongtask`` went
#: from 11.8 to 8.5 ms).
_LAZY = {
    "CLEANUP_TASKS": ".client",
    "Job": ".client",
    "JobSpec": ".client",
    "WorkerUtils": ".client",
    "quick_add_job": ".client",
    "CronItem": ".crontab",
    "parse_crontab": ".crontab",
}


__getattr__, __dir__ = attributes(__name__, _LAZY, globals())

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
