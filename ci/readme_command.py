"""Print one of the two commands README.md opens with, exactly as written there.

.ci/run runs the test command this prints, so CI runs what a new user copies
and the two can never drift apart:

    python3 ci/readme_command.py test    # the command that runs the tests
    python3 ci/readme_command.py bench   # the one that installs and runs the benchmark

The commands are the non-comment lines of the README's first ``bash`` block:
exactly two, the test one the only one that runs pytest. Anything else is an
error naming what was found, so a reshaped README fails CI instead of
running something else.
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def first_bash_block(text: str) -> list[str]:
    lines = text.splitlines()
    try:
        start = lines.index("```bash") + 1
        end = lines.index("```", start)
    except ValueError:
        sys.exit(f"{README}: no ```bash block")
    return lines[start:end]


def commands(text: str) -> dict[str, str]:
    found = [line.strip() for line in first_bash_block(text) if line.strip()]
    found = [line for line in found if not line.startswith("#")]
    tests = [line for line in found if "pytest" in line]
    if len(found) != 2 or len(tests) != 1:
        sys.exit(
            f"{README}: expected two commands in the first bash block, one running pytest; "
            f"found {found!r}"
        )
    (bench,) = (line for line in found if line not in tests)
    return {"test": tests[0], "bench": bench}


def main() -> None:
    which = sys.argv[1:]
    if which not in (["test"], ["bench"]):
        sys.exit(f"usage: {sys.argv[0]} test|bench")
    print(commands(README.read_text("utf-8"))[which[0]])


if __name__ == "__main__":
    main()
