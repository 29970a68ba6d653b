"""Check the hosted wheel build before any hosted CI runs it.

    python ci/check_cibuildwheel.py PATH/TO/cibuildwheel 3.10 3.11 3.12 3.13

For every runner in ci/github-wheels.yml, asks cibuildwheel (the version the
workflow pins, so pyproject.toml's [tool.cibuildwheel] is read as it will be)
which wheels it would build there, and fails unless that is exactly one per
supported CPython for each platform tag the README promises.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parent / "github-wheels.yml"

#: runner -> (cibuildwheel platform, architecture, platform tags built there)
RUNNERS = {
    "ubuntu-24.04": ("linux", "x86_64", ("manylinux_x86_64", "musllinux_x86_64")),
    "ubuntu-24.04-arm": ("linux", "aarch64", ("manylinux_aarch64", "musllinux_aarch64")),
    "macos-15-intel": ("macos", "x86_64", ("macosx_x86_64",)),
    "macos-15": ("macos", "arm64", ("macosx_arm64",)),
    "windows-2022": ("windows", "AMD64", ("win_amd64",)),
}


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} CIBUILDWHEEL PYTHON_VERSION...")
    cibuildwheel, pythons = sys.argv[1], sys.argv[2:]
    workflow = yaml.safe_load(WORKFLOW.read_text("utf-8"))
    job = workflow["jobs"]["wheels"]
    runners = job["strategy"]["matrix"]["os"]
    if sorted(runners) != sorted(RUNNERS):
        sys.exit(f"{WORKFLOW.name} runs on {runners}; this check knows {sorted(RUNNERS)}")
    pinned = [s["uses"] for s in job["steps"] if s.get("uses", "").startswith("pypa/cibuildwheel")]
    installed = f"pypa/cibuildwheel@v{version('cibuildwheel')}"
    if pinned != [installed]:
        sys.exit(f"{WORKFLOW.name} uses {pinned}, but this check ran {installed}")
    for runner, (platform, arch, tags) in RUNNERS.items():
        done = subprocess.run(
            [cibuildwheel, "--print-build-identifiers", "--platform", platform, "--archs", arch],
            capture_output=True,
            text=True,
            check=True,
        )
        selected = sorted(done.stdout.split())
        expected = sorted(f"cp{v.replace('.', '')}-{tag}" for v in pythons for tag in tags)
        if selected != expected:
            sys.exit(f"{runner}: cibuildwheel would build {selected}, expected {expected}")
        print(f"{runner:17} {' '.join(selected)}")


if __name__ == "__main__":
    main()
