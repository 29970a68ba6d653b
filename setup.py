"""Build script: compiles kongtask/_core's Cython twins unless told or unable to.

The pure-Python twins always ship, so a failed or skipped compile still gives a
working package; ``kongtask._core.IMPLEMENTATION`` tells which one loaded.

Where the C comes from: with Cython installed (a git checkout, or pip's isolated
build, which installs it from ``build-system.requires``) each ``.pyx`` is
cythonized; without Cython the generated ``.c`` files that the sdist ships are
compiled as they are, so ``pip install --no-build-isolation`` of the sdist
needs only a C compiler. With no working compiler, or neither Cython nor the
``.c`` files, the build prints one line and installs the pure twins.

Set ``KONGTASK_NO_EXTENSIONS=1`` to skip compiling, ``KONGTASK_REQUIRE_EXTENSIONS=1``
to make any of those fallbacks an error (CI uses it), ``KONGTASK_CYTHON_ANNOTATE=1``
to write the annotated HTML next to each .pyx.

It also copies the top-level ``sql/`` (the repository's one copy of the schema)
into the built package as ``kongtask/sql/``, so a wheel carries the files that
``kongtask.migrate`` reads; the source tree never holds that copy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError, LinkError

HERE = Path(__file__).parent
CORE = HERE / "kongtask" / "_core"
SQL = HERE / "sql"


def _want_extensions() -> bool:
    return os.environ.get("KONGTASK_NO_EXTENSIONS", "") in ("", "0")


def _required() -> bool:
    return os.environ.get("KONGTASK_REQUIRE_EXTENSIONS", "") not in ("", "0")


def _fall_back(reason: str) -> None:
    """The one line a build without the compiled twins prints."""
    print(
        f"kongtask: {reason}; using the pure-Python twins "
        "(KONGTASK_REQUIRE_EXTENSIONS=1 makes this an error)",
        file=sys.stderr,
    )


class _OptionalBuildExt(build_ext):
    """Falls back to the pure twins when any extension fails to compile.

    All or nothing: after a failure the modules that did compile are removed
    from the build, so the package never ships half a compiled set.
    """

    _current = "the extensions"

    def build_extension(self, ext: Extension) -> None:
        self._current = ext.name  # named in the fallback line
        super().build_extension(ext)

    def run(self) -> None:
        if not all(Path(src).is_file() for ext in self.extensions for src in ext.sources):
            # Checked here, not when setup.py is read: pip reads it several times per build.
            reason = "Cython is not installed and there is no generated C to compile"
            if _required():
                sys.exit(f"kongtask: {reason}")
            self.extensions = []
            _fall_back(reason)
            return
        inplace = self.inplace  # setuptools clears it while building
        try:
            super().run()
        except Exception as exc:
            if _required():
                raise
            self.inplace = False
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            _fall_back(self._why(exc))
        finally:
            self.inplace = inplace

    def _why(self, exc: Exception) -> str:
        """What failed, short: the compiler's own errors are printed above it."""
        if isinstance(exc, (CompileError, LinkError)):
            step = "compile" if isinstance(exc, CompileError) else "link"
            command = getattr(self.compiler, "compiler_so", None) or [
                getattr(self.compiler, "cc", "the C compiler")
            ]
            return f"{self._current} did not {step} with {command[0]}"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"could not build {self._current} ({first_line[:160]})"


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


def _extensions() -> list[Extension]:
    if not _want_extensions():
        return []
    pyx = sorted(CORE.glob("*.pyx"))
    try:
        from Cython.Build import cythonize
    except ImportError:
        return _shipped_c(pyx)
    sources = [str(path.relative_to(HERE)) for path in pyx]
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


def _shipped_c(pyx: list[Path]) -> list[Extension]:
    """Extensions from the generated C an sdist carries, for a build without Cython.

    A checkout has no generated C; build_ext then falls back to the pure twins.
    """
    return [
        Extension(f"kongtask._core.{path.stem}", [str(path.with_suffix(".c").relative_to(HERE))])
        for path in pyx
    ]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": _OptionalBuildExt, "build_py": _BuildPyWithSql},
)
