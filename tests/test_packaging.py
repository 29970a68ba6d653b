"""setup.py's fallbacks: a build without a working compiler, or without Cython and
generated C, still gives a working pure-Python package, and says so in one line.

Each test builds a copy of the source tree in a temporary folder, so the
checkout is never written to. Cython is hidden from the build (the path an
sdist takes under ``pip install --no-build-isolation`` without Cython), and the
generated C is replaced by tiny stand-in files: what they contain does not
matter to a compiler that fails, and a real one compiles them in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = sorted(path.stem for path in (ROOT / "kongtask" / "_core").glob("*.pyx"))

#: setup.py run as setuptools runs it, with ``import Cython`` failing.
WITHOUT_CYTHON = (
    "import runpy, sys; sys.modules['Cython'] = None; "
    "sys.argv = ['setup.py', *sys.argv[1:]]; runpy.run_path('setup.py', run_name='__main__')"
)


def _source_copy(tmp_path: Path, *, generated_c: bool) -> Path:
    tree = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.html", "sql")
    shutil.copytree(ROOT / "kongtask", tree / "kongtask", ignore=skip)
    shutil.copytree(ROOT / "sql", tree / "sql")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    if generated_c:
        for module in CORE_MODULES:
            (tree / "kongtask" / "_core" / f"{module}.c").write_text(
                f"int kongtask_stand_in_{module};\n"
            )
    return tree


def _build(tree: Path, cc: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``setup.py build`` of the copy with compiler ``cc``; the package lands in build/lib."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KONGTASK_")}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_CYTHON, "-q", "build", "--build-base", "build"],
        cwd=tree,
        env={**clean, "CC": cc, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _kongtask_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("kongtask:")]


def _built_package(tree: Path) -> Path:
    """build/lib or build/lib.PLATFORM (the name depends on whether extensions were declared)."""
    (lib,) = (tree / "build").glob("lib*")
    return lib


def _compiled(tree: Path) -> list[str]:
    return sorted(path.name for path in (tree / "build").rglob("*.so"))


def _implementation(lib: Path) -> str:
    """What ``kongtask._core`` loads from the built package, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONGTASK_")}
    done = subprocess.run(
        [sys.executable, "-c", "import kongtask as k; print(k.IMPLEMENTATION, k.__file__)"],
        cwd=lib,
        env={**env, "PYTHONPATH": str(lib)},
        capture_output=True,
        text=True,
        check=True,
    )
    implementation, location = done.stdout.split()
    assert Path(location).is_relative_to(lib), location
    return implementation


def test_failing_compiler_gives_the_pure_package_and_one_line(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path, generated_c=True)
    done = _build(tree, "/bin/false")
    assert done.returncode == 0, done.stderr
    assert _kongtask_lines(done.stderr) == [
        f"kongtask: kongtask._core.{CORE_MODULES[0]} did not compile with /bin/false; "
        "using the pure-Python twins (KONGTASK_REQUIRE_EXTENSIONS=1 makes this an error)"
    ]
    assert "Traceback" not in done.stderr
    assert _compiled(tree) == []
    lib = _built_package(tree)
    assert sorted(p.name for p in (lib / "kongtask" / "sql").glob("*.sql")) == sorted(
        p.name for p in (ROOT / "sql").glob("*.sql")
    )
    assert _implementation(lib) == "python"


def _real_compiler() -> str:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    found = shutil.which(cc)
    if found is None:
        pytest.skip(f"no C compiler ({cc}) to compile the modules that do compile")
    return found


def test_one_module_failing_leaves_none_compiled(tmp_path: Path) -> None:
    """All or nothing: modules compiled before the failure are removed from the build."""
    failing = CORE_MODULES[1]
    tree = _source_copy(tmp_path, generated_c=True)
    wrapper = tmp_path / "cc"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *{failing}.c*) exit 1;; esac\nexec {_real_compiler()} "$@"\n'
    )
    wrapper.chmod(0o755)
    done = _build(tree, str(wrapper))
    assert done.returncode == 0, done.stderr
    (line,) = _kongtask_lines(done.stderr)
    assert f"kongtask._core.{failing} did not compile" in line
    # The module before it did compile (the wrapper passes it on), then was removed.
    assert f"{CORE_MODULES[0]}.o" in {p.name for p in (tree / "build").rglob("*.o")}
    assert _compiled(tree) == []


def test_required_extensions_make_a_failing_compiler_an_error(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path, generated_c=True)
    done = _build(tree, "/bin/false", KONGTASK_REQUIRE_EXTENSIONS="1")
    assert done.returncode != 0
    assert _kongtask_lines(done.stderr) == []


def test_no_cython_and_no_generated_c_gives_the_pure_package(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path, generated_c=False)
    done = _build(tree, "/bin/false")
    assert done.returncode == 0, done.stderr
    assert _kongtask_lines(done.stderr) == [
        "kongtask: Cython is not installed and there is no generated C to compile; "
        "using the pure-Python twins (KONGTASK_REQUIRE_EXTENSIONS=1 makes this an error)"
    ]
    assert _implementation(_built_package(tree)) == "python"
