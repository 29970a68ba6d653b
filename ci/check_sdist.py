"""Check what an sdist carries: what a build needs, and nothing a user does not.

    python ci/check_sdist.py dist/kongtask-X.Y.Z.tar.gz

Needed: the package, the ``.pyx`` sources and the generated ``.c`` of every
compiled twin (so it builds without Cython), ``sql/`` exactly as in the
repository, setup.py, pyproject.toml, README.md. Not shipped: tests/ (they need
the checkout's npm lockfiles, bench/ and a PostgreSQL), compiled modules,
annotation HTML, node_modules, build output.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_PARTS = {"tests", "node_modules", "build", "dist", "__pycache__", ".venv"}
FORBIDDEN_SUFFIXES = {".so", ".pyd", ".html", ".o", ".pyc"}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SDIST")
    with tarfile.open(sys.argv[1]) as sdist:
        names = [PurePosixPath(*PurePosixPath(m.name).parts[1:]) for m in sdist.getmembers()]
    files = {str(name) for name in names if name.parts}
    pyx = sorted(path.relative_to(ROOT) for path in (ROOT / "kongtask" / "_core").glob("*.pyx"))
    needed = {"setup.py", "pyproject.toml", "README.md", "kongtask/__init__.py"}
    needed |= {str(path) for path in pyx} | {str(path.with_suffix(".c")) for path in pyx}
    needed |= {str(path.relative_to(ROOT)) for path in (ROOT / "sql").glob("*.sql")}
    problems = [f"missing {name}" for name in sorted(needed - files)]
    shipped_sql = {name for name in files if name.startswith("sql/")}
    expected_sql = {str(path.relative_to(ROOT)) for path in (ROOT / "sql").iterdir()}
    problems += [f"unexpected {name}" for name in sorted(shipped_sql - expected_sql)]
    for name in sorted(files):
        path = PurePosixPath(name)
        if FORBIDDEN_PARTS & set(path.parts) or path.suffix in FORBIDDEN_SUFFIXES:
            problems.append(f"should not ship {name}")
    if problems:
        sys.exit(f"{sys.argv[1]}:\n  " + "\n  ".join(problems))
    print(f"{Path(sys.argv[1]).name}: {len(files)} files; generated C for", *(p.stem for p in pyx))


if __name__ == "__main__":
    main()
