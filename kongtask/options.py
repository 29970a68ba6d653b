"""The tuning knobs of one worker pool, validated in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .events import EventEmitter
from .record import Record

if TYPE_CHECKING:
    from .crontab import CronItem  # loaded only by pools with a crontab

ForbiddenFlags = (
    Iterable[str] | Callable[[], Iterable[str] | Awaitable[Iterable[str] | None] | None] | None
)

#: Default upper bound of one fetch. Big batches amortise a statement and a
#: commit over many jobs (the drain rate is mostly decided by it); the batch
#: actually asked for adapts to how fast jobs finish, so slow jobs are never
#: hoarded by one pool (see fetcher.BatchSizer).
DEFAULT_LOCAL_QUEUE_SIZE = 1000
#: Fewest connections a pool can work with: two fetch connections, the result
#: writer, the heartbeat, and one for everything else (helpers, cron, the sweep).
MIN_POOL_SIZE = 5


def check_pool_size(what: str, size: int) -> None:
    """Refuse a pool too small for a worker, naming which setting it came from."""
    if size < MIN_POOL_SIZE:
        raise ConfigError(
            f"{what}: must be >= {MIN_POOL_SIZE} (two fetch connections, the result "
            f"writer, the heartbeat and one spare), got {size}"
        )


#: How long a leased batch stays locked by its fetch transaction before its
#: unfinished jobs are claimed with a row update, for tasks that opt into
#: leases (``lease=True``) on a pool that does not lease (``lease_time=0``).
DEFAULT_LEASE_TIME = 0.25


class WorkerOptions(Record):
    """Tuning knobs of one pool. Times are in seconds.

    Compared by value; ``repr`` leaves out ``listen_dsn`` (it may hold a password).
    """

    # In the order of the positional arguments, which repr follows too.
    __slots__ = (  # noqa: RUF023
        "concurrency",
        "schema",
        "poll_interval",
        "local_queue_size",
        "lease_time",
        "complete_batch_delay",
        "complete_batch_size",
        "forbidden_flags",
        "prepared_statements",
        "max_pool_size",
        "shutdown_timeout",
        "job_timeout",
        "heartbeat_interval",
        "dead_worker_timeout",
        "handle_signals",
        "events",
        "logger",
        "crontab",
        "worker_id",
        "migrate",
        "connect_kwargs",
        "listen_dsn",
    )
    _repr_hidden = ("listen_dsn",)

    def __init__(
        self,
        concurrency: int = 10,
        schema: str | None = None,
        poll_interval: float = 2.0,
        local_queue_size: int | None = None,
        lease_time: float = 0.0,
        complete_batch_delay: float = 0.002,
        complete_batch_size: int = 1000,
        forbidden_flags: ForbiddenFlags = None,
        prepared_statements: bool = True,
        max_pool_size: int | None = None,
        shutdown_timeout: float = 30.0,
        job_timeout: float | None = None,
        heartbeat_interval: float = 5.0,
        dead_worker_timeout: float = 30.0,
        handle_signals: bool = False,
        events: EventEmitter | None = None,
        logger: logging.Logger | None = None,
        crontab: str | Sequence[CronItem] | None = None,
        worker_id: str | None = None,
        migrate: bool = True,
        connect_kwargs: dict[str, Any] | None = None,
        listen_dsn: str | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.schema = schema
        self.poll_interval = poll_interval
        self.local_queue_size = local_queue_size
        self.lease_time = lease_time
        self.complete_batch_delay = complete_batch_delay
        self.complete_batch_size = complete_batch_size
        self.forbidden_flags = forbidden_flags
        self.prepared_statements = prepared_statements
        self.max_pool_size = max_pool_size
        self.shutdown_timeout = shutdown_timeout
        self.job_timeout = job_timeout
        self.heartbeat_interval = heartbeat_interval
        self.dead_worker_timeout = dead_worker_timeout
        self.handle_signals = handle_signals
        self.events = events
        self.logger = logger
        self.crontab = crontab
        self.worker_id = worker_id
        self.migrate = migrate
        self.connect_kwargs = {} if connect_kwargs is None else connect_kwargs
        self.listen_dsn = listen_dsn

    def validate(self) -> None:
        """Reject nonsense early, naming the option."""
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.poll_interval <= 0:
            raise ConfigError(f"poll_interval: must be > 0, got {self.poll_interval}")
        if self.local_queue_size is not None and self.local_queue_size < 1:
            raise ConfigError(f"local_queue_size: must be >= 1, got {self.local_queue_size}")
        if not 0 <= self.lease_time <= 60:
            raise ConfigError(f"lease_time: must be within 0..60 seconds, got {self.lease_time}")
        if self.max_pool_size is not None:
            check_pool_size("max_pool_size", self.max_pool_size)
        if self.complete_batch_delay < 0:
            raise ConfigError("complete_batch_delay: must be >= 0")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown_timeout: must be >= 0")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ConfigError(f"job_timeout: must be > 0 or None, got {self.job_timeout}")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval: must be > 0")
        if self.dead_worker_timeout <= 2 * self.heartbeat_interval:
            raise ConfigError(
                "dead_worker_timeout: must exceed twice heartbeat_interval, or live pools "
                "would be declared dead"
            )

    @property
    def max_batch(self) -> int:
        """The most jobs one fetch may lock."""
        return self.local_queue_size or max(DEFAULT_LOCAL_QUEUE_SIZE, self.concurrency)

    @property
    def lease_seconds(self) -> float:
        """The lease time of leased tasks: the pool's, or the default for tasks
        that opt in on a pool that claims."""
        return self.lease_time or DEFAULT_LEASE_TIME

    @property
    def pool_size(self) -> int:
        """Connections of the pool kongtask creates (when not given one)."""
        return self.max_pool_size or max(6, min(self.concurrency, 20))


def build_options(**kwargs: Any) -> WorkerOptions:
    """WorkerOptions from keyword arguments, naming any unknown one."""
    known = set(WorkerOptions.__slots__)
    unknown = set(kwargs) - known
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return WorkerOptions(**kwargs)
