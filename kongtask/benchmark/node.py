"""Finding and preparing graphile-worker's side of the benchmark (``bench.js``).

The script lives in the source tree (``bench/graphile-worker``), next to a
``package-lock.json`` pinning graphile-worker 0.17.3; ``npm ci`` there installs
it. The harness runs it as one more engine, exactly like kongtask's children.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from kongtask.errors import ConfigError

from .report import source_root


def default_bench_dir() -> Path | None:
    """``bench/graphile-worker`` of the source tree this kongtask runs from, if any."""
    root = source_root()
    if root is None:
        return None
    folder = root / "bench" / "graphile-worker"
    return folder if (folder / "bench.js").is_file() else None


def node_version(node: str) -> str | None:
    """``node --version``, or None when it cannot be run."""
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() or None


def prepare(bench_dir: Path | None, *, log: bool = True) -> tuple[str, Path]:
    """Check node and install the pinned graphile-worker; returns ``(node, folder)``.

    Raises :class:`ConfigError` with what to do when something is missing, so
    a comparison never silently turns into a kongtask-only run.
    """
    folder = bench_dir or default_bench_dir()
    if folder is None or not (folder / "bench.js").is_file():
        raise ConfigError(
            "compare: bench/graphile-worker/bench.js not found; run from a kongtask source "
            "checkout or pass --node-bench DIR"
        )
    node = shutil.which("node")
    if node is None:
        raise ConfigError(
            "compare: graphile-worker needs Node.js 20 or newer; `node` is not on PATH"
        )
    if not (folder / "node_modules" / "graphile-worker" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise ConfigError(
                f"compare: {folder}/node_modules is missing and `npm` is not on "
                f"PATH to install it (run `npm ci` in {folder})"
            )
        if log:
            print(
                f"[bench] installing graphile-worker: npm ci in {folder}",
                file=sys.stderr,
                flush=True,
            )
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=folder,
            stdout=sys.stderr,
            stderr=sys.stderr,
            check=False,
        )
        if done.returncode != 0:
            raise ConfigError(f"compare: `npm ci` failed in {folder} (exit {done.returncode})")
    return node, folder
