"""Build script: cythonizes kongtask/_core/*.pyx unless told or forced not to.

The pure-Python twins always ship, so a failed or skipped compile still gives a
working package; ``kongtask._core.IMPLEMENTATION`` tells which one loaded.
Set ``KONGTASK_NO_EXTENSIONS=1`` to skip compiling, ``KONGTASK_CYTHON_ANNOTATE=1``
to write the annotated HTML next to each .pyx.

It also copies the top-level ``sql/`` (the repository's one copy of the schema)
into the built package as ``kongtask/sql/``, so a wheel carries the files that
``kongtask.migrate`` reads; the source tree never holds that copy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
CORE = HERE / "kongtask" / "_core"
SQL = HERE / "sql"


def _want_extensions() -> bool:
    return os.environ.get("KONGTASK_NO_EXTENSIONS", "") in ("", "0")


class _OptionalBuildExt(build_ext):
    """Falls back to the pure twins when there is no working compiler."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if os.environ.get("KONGTASK_REQUIRE_EXTENSIONS"):
                raise
            print(
                f"kongtask: building extensions failed ({exc}); using pure Python", file=sys.stderr
            )

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            if os.environ.get("KONGTASK_REQUIRE_EXTENSIONS"):
                raise
            print(f"kongtask: could not compile {ext.name} ({exc})", file=sys.stderr)


class _BuildPyWithSql(build_py):
    """Adds ``sql/*.sql`` to the built package as ``kongtask/sql/*.sql``.

    A build step rather than a committed copy, so git holds the schema once. In
    an editable install nothing is copied (kongtask finds ``sql/`` beside the
    package), but the mapping is still reported so a strict editable install
    links the files into its tree.
    """

    def _sql_mapping(self) -> dict[str, str]:
        sources = sorted(SQL.glob("*.sql"))
        if not sources:
            raise FileNotFoundError(f"no SQL files in {SQL}: the build would ship no schema")
        target = Path(self.build_lib) / "kongtask" / "sql"
        return {str(target / src.name): str(src) for src in sources}

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for target, source in self._sql_mapping().items():
            self.mkpath(str(Path(target).parent))
            self.copy_file(source, target)

    def get_output_mapping(self) -> dict[str, str]:
        return {**super().get_output_mapping(), **self._sql_mapping()}

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:  # type: ignore[override]
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:  # already built from get_output_mapping
            return outputs
        return [*outputs, *self._sql_mapping()]


def _extensions() -> list:
    if not _want_extensions():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if os.environ.get("KONGTASK_REQUIRE_EXTENSIONS"):
            raise
        print("kongtask: Cython not installed; using pure Python", file=sys.stderr)
        return []
    sources = sorted(str(p.relative_to(HERE)) for p in CORE.glob("*.pyx"))
    annotate = bool(os.environ.get("KONGTASK_CYTHON_ANNOTATE"))
    return cythonize(
        sources,
        language_level=3,
        annotate=annotate,
        # cythonize skips up-to-date .c files, which would write no HTML.
        force=annotate,
        compiler_directives={
            # Every directive is chosen on purpose: the hot loops index lists and
            # tuples we built ourselves, so bounds checks and negative-index
            # wrapping buy nothing; cdivision matches C on the integer math.
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    )


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": _OptionalBuildExt, "build_py": _BuildPyWithSql},
)
