"""kongtask: a fast PostgreSQL job queue for Python, schema-compatible with graphile-worker."""

from __future__ import annotations

from ._core import IMPLEMENTATION
from ._version import __version__
from .client import CLEANUP_TASKS, Job, JobSpec, WorkerUtils, quick_add_job
from .crontab import CronItem, parse_crontab
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
