"""Task registration (:class:`TaskList`) and loading tasks from a module or folder."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TaskLoadError

if TYPE_CHECKING:
    from .helpers import Helpers

Handler = Callable[[Any, "Helpers"], Awaitable[Any] | Any]


class TaskList(Mapping[str, Handler]):
    """Task identifiers mapped to handlers.

    ``async def`` handlers run on the event loop; plain functions run in the
    loop's thread pool so they cannot stall other jobs.
    """

    def __init__(self, tasks: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self._is_async: dict[str, bool] = {}
        self._timeouts: dict[str, float | None] = {}
        self._leases: dict[str, bool | None] = {}
        for name, handler in (tasks or {}).items():
            self.add(name, handler)

    def add(
        self,
        name: str,
        handler: Handler,
        *,
        timeout: float | None = None,
        lease: bool | None = None,
    ) -> None:
        """Register ``handler`` under ``name``; a name may only be taken once.

        ``timeout`` (seconds) overrides the pool's ``job_timeout`` for this task.
        ``lease`` overrides the pool's fetch mode for this task's plain jobs:
        True leases them (fast, but a crash neither counts an attempt nor keeps
        a lost connection from freeing a running job: see docs/guarantees.md),
        False always claims them, None follows the pool (``lease_time``).
        """
        if not isinstance(name, str) or not name or len(name) > 128:
            raise TaskLoadError(f"task name must be a string of 1..128 characters, got {name!r}")
        if not callable(handler):
            raise TaskLoadError(f"task {name!r}: handler {handler!r} is not callable")
        if name in self._handlers:
            raise TaskLoadError(f"task {name!r} is registered twice")
        if timeout is not None and not timeout > 0:
            raise TaskLoadError(f"task {name!r}: timeout must be > 0 seconds, got {timeout!r}")
        self._handlers[name] = handler
        if lease is not None and not isinstance(lease, bool):
            raise TaskLoadError(f"task {name!r}: lease must be True, False or None, got {lease!r}")
        self._timeouts[name] = timeout
        self._leases[name] = lease
        # A callable object counts as async when its __call__ is a coroutine function.
        call = vars(type(handler)).get("__call__")
        self._is_async[name] = inspect.iscoroutinefunction(handler) or (
            not inspect.isfunction(handler) and inspect.iscoroutinefunction(call)
        )

    def task(
        self, name: str, *, timeout: float | None = None, lease: bool | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: ``@tasks.task("send_email", timeout=30)``; see :meth:`add`."""

        def register(handler: Handler) -> Handler:
            self.add(name, handler, timeout=timeout, lease=lease)
            return handler

        return register

    def is_async(self, name: str) -> bool:
        """Whether the handler is a coroutine function (decided once, at registration)."""
        return self._is_async[name]

    def timeout(self, name: str) -> float | None:
        """This task's own timeout in seconds, or None to use the pool's default."""
        return self._timeouts[name]

    def lease(self, name: str) -> bool | None:
        """Whether this task's plain jobs are leased (None: as the pool says)."""
        return self._leases[name]

    def __getitem__(self, name: str) -> Handler:
        return self._handlers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"TaskList({sorted(self._handlers)})"


def as_task_list(tasks: TaskList | Mapping[str, Handler]) -> TaskList:
    """Accept a TaskList or a plain dict of handlers."""
    if isinstance(tasks, TaskList):
        return tasks
    if isinstance(tasks, Mapping):
        return TaskList(tasks)
    raise TaskLoadError(
        f"tasks must be a TaskList or a dict of handlers, got {type(tasks).__name__}"
    )


def load_tasks(spec: str) -> TaskList:
    """Tasks from a dotted module name, a ``.py`` file, or a folder of task files.

    A module must expose a ``TaskList`` or a dict (as ``tasks``, or the only
    one at top level). In a folder each ``.py`` file is one task named by its
    path relative to the folder without the suffix (``users/emails/verify``),
    whose handler is its ``task`` function (or its only public function).
    """
    path = Path(spec)
    if path.is_dir():
        return _load_directory(path)
    if path.suffix == ".py" and path.is_file():
        module = _import_file(path, f"kongtask_tasks_{abs(hash(path.resolve()))}")
    elif path.suffix == ".py" or "/" in spec or "\\" in spec or not _is_dotted_name(spec):
        # A path that is not there: importlib would only say something unrelated.
        raise TaskLoadError(f"tasks {spec!r}: no such file or folder")
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (spec == exc.name or spec.startswith(exc.name + ".")):
                raise TaskLoadError(
                    f"tasks {spec!r}: no such file, folder or module "
                    f"(no module {exc.name!r} in {sys.path[0] or '.'!r} or the installed packages)"
                ) from None
            raise TaskLoadError(_import_failure(f"task module {spec!r}", exc)) from exc
        except Exception as exc:
            raise TaskLoadError(_import_failure(f"task module {spec!r}", exc)) from exc
    return _tasks_from_module(module, spec)


def _is_dotted_name(spec: str) -> bool:
    return bool(spec) and all(part.isidentifier() for part in spec.split("."))


#: Frames of a failed import shown to the user: enough to find the line, short
#: enough to read at a glance (the full traceback is in the exception's cause).
IMPORT_FRAMES = 3


def _import_failure(what: str, exc: BaseException) -> str:
    """``what failed to import: Type: message`` and the failing frames, file and line.

    importlib's own frames are left out: they are the same for every import and
    say nothing about the user's code.
    """
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen ")
        and frame.filename not in (__file__, importlib.__file__)
    ][-IMPORT_FRAMES:]
    lines = [f"{what} failed to import: {type(exc).__name__}: {exc}"]
    for frame in frames:
        code = f": {frame.line.strip()}" if frame.line else ""
        lines.append(f"  {frame.filename}, line {frame.lineno}, in {frame.name}{code}")
    return "\n".join(lines)


def _import_file(path: Path, name: str) -> Any:
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise TaskLoadError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise TaskLoadError(_import_failure(f"task file {path}", exc)) from exc
    return module


def _tasks_from_module(module: Any, where: str) -> TaskList:
    candidate = getattr(module, "tasks", None)
    if isinstance(candidate, TaskList | Mapping):
        return as_task_list(candidate)
    found = [v for v in vars(module).values() if isinstance(v, TaskList)]
    if len(found) == 1:
        return found[0]
    raise TaskLoadError(
        f"module {where!r} exposes no task list: define `tasks = TaskList()` or a dict `tasks`"
    )


def _load_directory(root: Path) -> TaskList:
    result = TaskList()
    files = sorted(p for p in root.rglob("*.py") if not p.name.startswith("_"))
    if not files:
        raise TaskLoadError(f"task folder {root} holds no .py files")
    for file in files:
        name = file.relative_to(root).with_suffix("").as_posix()
        module = _import_file(file, "kongtask_task_" + name.replace("/", "__"))
        handler = getattr(module, "task", None)
        if handler is None:
            public = [
                v
                for k, v in vars(module).items()
                if inspect.isfunction(v)
                and not k.startswith("_")
                and v.__module__ == module.__name__
            ]
            if len(public) != 1:
                raise TaskLoadError(
                    f"task file {file} must define `task(payload, helpers)` "
                    f"(found {len(public)} public functions)"
                )
            handler = public[0]
        result.add(name, handler)
    return result
