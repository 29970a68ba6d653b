"""Every SQL statement kongtask sends lives in ``kongtask/queries/`` (or the DDL in ``sql/``).

The rule (docs/architecture.md, "Where SQL lives") keeps statements where a
reviewer checks quoting and parameters in one place, and keeps control-flow
modules free of SQL. This test walks the package's syntax trees and fails on
any string constant or f-string, outside ``kongtask/queries``, that reads as
the start of an SQL statement. Docstrings are prose and are skipped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kongtask"

#: Folders whose SQL is allowed to stay. ``queries`` is the home of SQL.
#: ``benchmark`` is a tool, not part of a worker, and its SQL (fills, counts,
#: server settings of the benchmark database) is being reworked separately:
#: exempt until it is moved too.
EXEMPT = ("queries", "benchmark")

_SQL_START = re.compile(
    r"""^\s*\(?\s*(
        select\s | insert\s+into\s | update\s+\S+\s+set\s | delete\s+from\s
      | with\s+(recursive\s+)?\w+\s+as\b
      | create\s+(or\s+replace\s+|unique\s+)?(table|index|schema|function|type|view|trigger)\b
      | alter\s+(table|schema|function|type)\b | drop\s+(table|schema|index|function|type)\b
      | truncate\s | lock\s+table\s | copy\s+\S+\s+(from|to)\s
      | (un)?listen\s+("[^"]+"|[\w:]+)\s*;?\s*$ | notify\s+("[^"]+"|[\w:]+)\s*[,;]?
      | set\s+(local\s+|session\s+)?\w+\s*(=|to)\s | reset\s+\w+\s*;?\s*$ | show\s+\w+\s*;?\s*$
      | (begin|commit|rollback|start\s+transaction|savepoint\s+\w+)\s*(;|$)
      | discard\s+all\s*;?\s*$
    )""",
    re.IGNORECASE | re.VERBOSE,
)


def _text(node: ast.AST) -> str | None:
    """A string constant's text; an f-string's with ``{}`` for each substitution."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
        )
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_strings(source: str) -> list[tuple[int, str]]:
    """(line, first 60 characters) of each SQL-looking string in ``source``."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # judged whole, not by its pieces
            skip.update(id(part) for part in node.values)
    hits = []
    for node in ast.walk(tree):
        text = None if id(node) in skip else _text(node)
        if text is not None and _SQL_START.match(text):
            hits.append((node.lineno, text.strip()[:60]))
    return sorted(hits)


def _modules() -> list[Path]:
    paths = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] not in EXEMPT:
            paths.append(path)
    return paths


def test_no_sql_outside_queries() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
        for path in _modules()
        for line, text in sql_strings(path.read_text("utf-8"))
    ]
    assert not found, "SQL outside kongtask/queries (move it there):\n" + "\n".join(found)


def test_the_walk_covers_the_package() -> None:
    names = {path.relative_to(PACKAGE).as_posix() for path in _modules()}
    assert {"cron.py", "migrate.py", "leases.py", "metrics.py", "cli.py"} <= names
    assert not any(name.startswith("queries/") for name in names)


def test_detector_finds_statements() -> None:
    source = '''
"""select docstrings are prose."""
A = "select 1"
B = f"insert into {schema}._private_jobs (id) values ($1)"
C = "  with x as (select 1) select * from x"
D = "commit"
E = f"begin; set local idle_in_transaction_session_timeout = '{ms}ms'"
F = "set plan_cache_mode = force_generic_plan"
G = "delete from t where id = $1"
H = 'listen "jobs:insert"'
'''
    assert [line for line, _ in sql_strings(source)] == [3, 4, 5, 6, 7, 8, 9, 10]


def test_detector_leaves_prose_alone() -> None:
    source = """
A = "LISTEN connection lost; reconnecting"
C = f"update {name} later"
D = "commit the change before running"
E = "with --all-failed: only this task"
"""
    assert sql_strings(source) == []
