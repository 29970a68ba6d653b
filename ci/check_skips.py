"""Fail a test run that skipped what CI must run: a skip is a silent fallback.

    python ci/check_skips.py LOG [ALLOWED_REASON_SUBSTRING...]

LOG is the output of a pytest run made with ``-rs`` (.ci/run sets it through
``PYTEST_ADDOPTS``, so the README's command still runs exactly as written).
Every ``SKIPPED`` line must contain one of the allowed substrings; the run
must also have ended with pytest's summary line, so a crashed or cut-off run
is not taken for a clean one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SUMMARY = re.compile(r"^=*\s*\d+ passed.* in [\d.]+s")
SKIPPED = re.compile(r"^SKIPPED \[\d+\] (.*)$")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} LOG [ALLOWED_REASON_SUBSTRING...]")
    log, allowed = Path(sys.argv[1]), sys.argv[2:]
    lines = log.read_text("utf-8", errors="replace").splitlines()
    if not any(SUMMARY.match(line) for line in lines):
        sys.exit(f"{log}: no pytest summary line: the run did not finish")
    skipped = [m.group(1) for line in lines if (m := SKIPPED.match(line))]
    refused = [reason for reason in skipped if not any(a in reason for a in allowed)]
    if refused:
        sys.exit("tests skipped that CI must run:\n  " + "\n  ".join(refused))
    print(f"{log.name}: {len(skipped)} skip line(s), all expected" if skipped else "no skips")


if __name__ == "__main__":
    main()
