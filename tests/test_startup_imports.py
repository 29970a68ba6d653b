"""What a worker process imports before it is ready: only what ``run`` needs.

Start-up time is measured in ``kongtask bench`` (the startup scenario); these
tests hold the line on *what* is imported, in a fresh interpreter, so that a
new top-level import of the client, the crontab package, the embedded server,
the inspect commands or ``shutil`` (via argparse's help formatter) into the
worker's path fails here rather than slowly creeping into the figures.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import kongtask
from kongtask.argparsing import ArgumentParser, terminal_columns

#: Modules a worker must not load to become ready.
NOT_FOR_WORKERS = (
    "kongtask.client",
    "kongtask.crontab",
    "kongtask.embedded",
    "kongtask.cron",
    "kongtask.inspect_cli.commands",
    "kongtask.dashboard.app",
    "kongtask.supervisor",  # --processes only
    "kongtask.statedump",  # on SIGUSR1 only
    "shutil",
    "ctypes",
    "shlex",
)

_PROBE = """
import sys
{code}
print(",".join(m for m in {modules!r} if m in sys.modules))
"""


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code, modules=NOT_FOR_WORKERS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return [name for name in out.split(",") if name]


def test_import_kongtask_loads_no_module_a_worker_does_not_need() -> None:
    assert _loaded_after("import kongtask") == []


def test_kongtask_run_parses_its_arguments_without_them() -> None:
    code = (
        "from kongtask import cli\n"
        "argv = ['--log-level', 'INFO', 'run', '-c', 'postgresql://x/y', '-j', '4']\n"
        "cli.parser_for(argv).parse_args(argv)"
    )
    assert _loaded_after(code) == []
    # Nor the other commands' modules: building their parsers cost run 7 ms.
    others = ("kongtask.inspect_cli", "kongtask.dashboard")
    code += f"\nprint(','.join(m for m in sys.modules if m.startswith({others!r})))"
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "commands"),
    [
        (["run", "--once"], {"run"}),
        (["--log-level", "DEBUG", "run"], {"run"}),
        (["jobs"], None),
        (["--help", "run"], None),
        ([], None),
    ],
)
def test_only_a_run_command_line_gets_the_run_only_parser(
    argv: list[str], commands: set[str] | None
) -> None:
    from kongtask import cli

    [sub] = [a for a in cli.parser_for(argv)._actions if a.dest == "command"]
    choices = set(sub.choices)  # type: ignore[arg-type]
    if commands is None:
        assert {"run", "migrate", "add", "jobs", "dashboard", "bench"} <= choices
    else:
        assert choices == commands


def test_the_bench_worker_child_parses_its_arguments_without_them() -> None:
    code = (
        "from kongtask.benchmark import worker_process\n"
        "worker_process.parse_args(['--schema', 's', '--scenario', 'idle'])"
    )
    assert _loaded_after(code) == []


def test_no_class_on_the_worker_or_bench_child_path_is_a_dataclass() -> None:
    # @dataclass compiles its methods with exec when the class is created
    # (0.4-1.5 ms each); kongtask.record gives value classes without it.
    code = (
        "import kongtask, kongtask.worker, kongtask.benchmark.scenarios\n"
        "found = [f'{m.__name__}.{k}' for name, m in list(sys.modules.items())\n"
        "         if name.startswith('kongtask') and m is not None\n"
        "         for k, v in vars(m).items()\n"
        "         if isinstance(v, type) and v.__module__ == name\n"
        "         and '__dataclass_fields__' in vars(v)]\n"
        "print(found)"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize(
    "name", ["WorkerUtils", "quick_add_job", "Job", "JobSpec", "CLEANUP_TASKS", "CronItem"]
)
def test_lazy_names_resolve_to_their_modules(name: str) -> None:
    from kongtask import client, crontab

    value = getattr(kongtask, name)
    assert value is getattr(client if hasattr(client, name) else crontab, name)
    assert name in dir(kongtask)


def test_every_public_name_resolves_and_unknown_ones_raise() -> None:
    for name in kongtask.__all__:
        assert getattr(kongtask, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        kongtask.no_such_name  # noqa: B018


def test_help_width_follows_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    assert terminal_columns() == 50
    parser = ArgumentParser(prog="p", description="word " * 40)
    assert max(len(line) for line in parser.format_help().splitlines()) <= 48
    monkeypatch.setenv("COLUMNS", "not a number")
    assert terminal_columns() >= 1
