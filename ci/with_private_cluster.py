"""Run a command against a PostgreSQL cluster of its own, made for it and removed after.

    python3 ci/with_private_cluster.py python -m pytest tests

.ci/run runs the suite on several Pythons at once; each run gets its own
server (initdb in a temporary folder, its own port, ``tests/pgcluster.py``)
through ``TEST_DATABASE_URL``, so the runs can never see each other's
databases, connections or load on the machine's server. Exits with the
command's exit code; on SIGTERM it removes the cluster too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgcluster import available, private_cluster


def main() -> int:
    command = sys.argv[1:]
    if not command:
        sys.exit(f"usage: {sys.argv[0]} COMMAND [ARG...]")
    # Stopped by .ci/run (SIGTERM): unwind, so the cluster is stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    problem = available()
    if problem is not None:
        sys.exit(f"cannot make a private PostgreSQL cluster: {problem}")
    with private_cluster() as cluster:
        print(f"private PostgreSQL cluster: {cluster.dsn}", flush=True)
        env = {**os.environ, "TEST_DATABASE_URL": cluster.dsn}
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
