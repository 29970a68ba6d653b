"""Runs the micro benches and prints how much faster the compiled twin is.

    python bench/micro/summary.py [--json OUT] [extra pytest args...]

Each bench runs once per twin (see test_core_bench.py for what each measures);
the table shows the median time of each and the speed-up, pure median divided
by compiled median (higher is better), next to the target where DESIGN/brief
sets one. Medians rather than means: this box is shared, and a stray
scheduling hiccup should not move the number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# Minimum compiled/pure speed-ups asked for; benches without one are informative.
TARGETS = {
    "decode[small]": 3.0,
    "decode[mixed]": 3.0,
    "encode[10k]": 3.0,
    "cron_next_fire[1000x12]": 5.0,
    "cron_fire_times[year]": 5.0,
    "cron_tick[1000x60]": 5.0,
    "cron_parse[1000]": None,
    "backoff[10k]": None,
    "decode_leased[1000]": None,
    "ids_literal[1000]": None,
    "dispatch[1000]": None,
}


def run_benches(out: Path, extra: list[str]) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("KONGTASK_NO_EXTENSIONS", None)  # the compiled twin must be there to compare
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        f"--benchmark-json={out}",
        *extra,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"micro benches failed (exit {done.returncode})")


def table(report: dict) -> list[tuple[str, float, float, float, float | None]]:
    medians: dict[str, dict[str, float]] = {}
    for bench in report["benchmarks"]:
        medians.setdefault(bench["group"], {})[bench["params"]["impl"]] = bench["stats"]["median"]
    rows = []
    for group in sorted(medians, key=lambda g: (list(TARGETS).index(g) if g in TARGETS else 99, g)):
        pair = medians[group]
        if "python" in pair and "cython" in pair:
            speedup = pair["python"] / pair["cython"]
            rows.append((group, pair["python"], pair["cython"], speedup, TARGETS.get(group)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="also keep pytest-benchmark's JSON here")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.json or Path(tmp) / "bench.json"
        run_benches(out, extra)
        report = json.loads(out.read_text())
    rows = table(report)
    cpu = report["machine_info"]["cpu"].get("brand_raw", "unknown CPU")
    print(f"kongtask._core micro benches (median of each; {cpu})")
    print()
    header = f"{'bench':<26}{'pure':>12}{'compiled':>12}{'compiled/pure':>16}{'target':>9}"
    print(header)
    print("-" * len(header))
    for group, pure, compiled, speedup, target in rows:
        goal = f">={target:g}x" if target else "-"
        flag = "" if target is None or speedup >= target else "  (below target)"
        print(
            f"{group:<26}{pure * 1e3:>10.3f}ms{compiled * 1e3:>10.3f}ms"
            f"{speedup:>15.2f}x{goal:>9}{flag}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
