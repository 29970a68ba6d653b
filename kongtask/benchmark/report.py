"""What a run reports: machine facts, the summary table, ratios, the JSON file, the chart.

Numbers are summarised as the median over rounds; every round's raw result
is kept in the JSON so a noisy round can be seen for what it is.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson

import kongtask

from . import fleet
from .common import median
from .spawn import jobs_of

US_JOB = "µs/job"


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the table: a key of one scenario's result."""

    scenario: str
    key: str
    label: str
    unit: str
    higher_is_better: bool
    #: Key to use when an engine has no ``key`` (graphile-worker's addJobs
    #: always returns rows, so its plain rate is the "returning" rate).
    fallback: str | None = None

    @property
    def group(self) -> str:
        """The scenario as the table names it (without drain-from-spawn's size)."""
        return self.scenario.partition("@")[0]


#: Throughput and CPU per job of the fixed scenarios.
THROUGHPUT_METRICS: tuple[Metric, ...] = (
    Metric("enqueue", "jobs_per_sec", "add_jobs_count (bulk)", "jobs/s", True),
    Metric(
        "enqueue",
        "returning_jobs_per_sec",
        "add_jobs (returns rows)",
        "jobs/s",
        True,
        fallback="jobs_per_sec",
    ),
    Metric("drain", "jobs_per_sec", "drain, one pool", "jobs/s", True),
    Metric("processes", "jobs_per_sec", "drain, P processes", "jobs/s", True),
    Metric("enqueue", "cpu_us_per_job", "add_jobs_count: client CPU", US_JOB, False),
    Metric("enqueue", "pg_cpu_us_per_job", "add_jobs_count: PostgreSQL CPU", US_JOB, False),
    Metric(
        "enqueue",
        "returning_cpu_us_per_job",
        "add_jobs (rows): client CPU",
        US_JOB,
        False,
        fallback="cpu_us_per_job",
    ),
    Metric(
        "enqueue",
        "returning_pg_cpu_us_per_job",
        "add_jobs (rows): PostgreSQL CPU",
        US_JOB,
        False,
        fallback="pg_cpu_us_per_job",
    ),
    Metric("drain", "cpu_us_per_job", "drain: worker CPU", US_JOB, False),
    Metric("drain", "pg_cpu_us_per_job", "drain: PostgreSQL CPU", US_JOB, False),
    Metric("memory", "cpu_us_per_job", "insert + drain: worker CPU", US_JOB, False),
    Metric("memory", "pg_cpu_us_per_job", "insert + drain: PostgreSQL CPU", US_JOB, False),
    Metric("processes", "cpu_us_per_job", "P processes: workers' CPU", US_JOB, False),
    Metric("processes", "pg_cpu_us_per_job", "P processes: PostgreSQL CPU", US_JOB, False),
)
#: Rows after the throughput block (drain-from-spawn's rows go between the two).
LATER_METRICS: tuple[Metric, ...] = (
    Metric("latency", "p50", "add_job -> start p50", "ms", False),
    Metric("latency", "p95", "add_job -> start p95", "ms", False),
    Metric("latency", "p99", "add_job -> start p99", "ms", False),
    Metric("latency", "max", "add_job -> start max", "ms", False),
    Metric("scheduled", "p50", "lateness p50", "ms", False),
    Metric("scheduled", "p99", "lateness p99", "ms", False),
    Metric("memory", "idle_rss_mb", "idle RSS", "MB", False),
    Metric("memory", "peak_rss_mb", "peak RSS in drain", "MB", False),
    Metric("startup", "spawn_to_ready_ms", "spawn -> ready", "ms", False),
    Metric("startup", "run_to_ready_ms", "run() -> ready", "ms", False),
    Metric("startup", "spawn_floor_libraries_ms", "floor: runtime + libraries", "ms", False),
    Metric("startup", "spawn_floor_interpreter_ms", "floor: bare runtime", "ms", False),
    Metric("startup", "spawn_over_floor_ms", "spawn -> ready minus libraries floor", "ms", False),
    Metric("payload", "cpu_us_per_job", "large payload (1.9 KB): worker CPU", US_JOB, False),
    Metric("payload", "tiny_cpu_us_per_job", "tiny payload: worker CPU", US_JOB, False),
    Metric("payload", "orjson_loads_us", "orjson.loads of the large payload", "µs", False),
    Metric(
        "payload",
        "unexplained_us_per_job",
        "large minus tiny minus orjson.loads",
        US_JOB,
        False,
    ),
)
METRICS = THROUGHPUT_METRICS + LATER_METRICS


def spawn_metrics(result_key: str) -> tuple[Metric, ...]:
    """The rows of one drain-from-spawn queue size (the sizes are chosen per run)."""
    jobs = jobs_of(result_key)
    if jobs is None:
        return ()
    n = f"{jobs:,}"
    return (
        Metric(result_key, "jobs_per_sec", f"{n} jobs, spawn -> empty", "jobs/s", True),
        Metric(result_key, "seconds", f"{n} jobs, spawn -> empty", "s", False),
        Metric(result_key, "cpu_us_per_job", f"{n} jobs: worker CPU", US_JOB, False),
        Metric(result_key, "pg_cpu_us_per_job", f"{n} jobs: PostgreSQL CPU", US_JOB, False),
    )


def metrics_for(summary: Mapping[str, Any]) -> list[Metric]:
    """Every row this run can fill: one block per spawn size after the throughput rows."""
    keys = sorted((k for k in summary if jobs_of(k) is not None), key=lambda k: jobs_of(k) or 0)
    spawned = [m for k in keys for m in spawn_metrics(k)]
    fleets = [Metric(*row) for row in fleet.METRIC_ROWS if row[0] in summary]
    return [*THROUGHPUT_METRICS, *spawned, *fleets, *LATER_METRICS]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issues, checked against this run (informational)."""

    description: str
    scenario: str
    key: str
    limit: float
    # "max" (value <= limit), "min" (value >= limit), "ratio_gw" (kongtask /
    # graphile-worker >= limit), "ratio_pure" (compiled / pure >= limit),
    # "saving_pure" (pure / compiled >= limit, for CPU per job: lower is better)
    kind: str
    fallback: str | None = None


TARGETS: tuple[Target, ...] = (
    Target("drain >= 1.5x graphile-worker", "drain", "jobs_per_sec", 1.5, "ratio_gw"),
    Target(
        "drain-from-spawn 100,000 >= 1.5x graphile-worker",
        "drain-from-spawn@100000",
        "jobs_per_sec",
        1.5,
        "ratio_gw",
    ),
    Target(
        "drain-from-spawn 1,000,000 >= 1.5x graphile-worker",
        "drain-from-spawn@1000000",
        "jobs_per_sec",
        1.5,
        "ratio_gw",
    ),
    Target("enqueue >= 1.5x graphile-worker", "enqueue", "jobs_per_sec", 1.5, "ratio_gw"),
    Target(
        "add_jobs returning rows >= 1.2x graphile-worker's addJobs",
        "enqueue",
        "returning_jobs_per_sec",
        1.2,
        "ratio_gw",
        fallback="jobs_per_sec",
    ),
    Target(
        "compiled/pure worker CPU per job on drain >= 1.5x",
        "drain",
        "cpu_us_per_job",
        1.5,
        "saving_pure",
    ),
    Target(
        "compiled/pure wall on drain-from-spawn 100,000 >= 1.3x",
        "drain-from-spawn@100000",
        "jobs_per_sec",
        1.3,
        "ratio_pure",
    ),
    Target("latency p50 <= 1 ms", "latency", "p50", 1.0, "max"),
    Target("latency p99 <= 2 ms", "latency", "p99", 2.0, "max"),
    Target("scheduled lateness p99 <= 10 ms", "scheduled", "p99", 10.0, "max"),
    Target("idle RSS <= 32 MB", "memory", "idle_rss_mb", 32.0, "max"),
    Target("spawn -> ready <= 100 ms", "startup", "spawn_to_ready_ms", 100.0, "max"),
    Target(
        "spawn -> ready within 10 ms of the floor (interpreter + asyncpg, uvloop, orjson)",
        "startup",
        "spawn_over_floor_ms",
        10.0,
        "max",
    ),
    Target("run() -> ready <= 10 ms", "startup", "run_to_ready_ms", 10.0, "max"),
    Target(
        "large-payload job within 2 µs of orjson.loads + a tiny-payload job (compiled)",
        "payload",
        "unexplained_us_per_job",
        2.0,
        "max",
    ),
    Target(
        "compiled/pure worker CPU per job with the large payload >= 1.3x",
        "payload",
        "cpu_us_per_job",
        1.3,
        "saving_pure",
    ),
)

#: What each kind of target compares, printed beside the verdict.
TARGET_MEASURES = {
    "ratio_gw": "kongtask / graphile-worker, same run",
    "ratio_pure": "compiled / pure, same run",
    "saving_pure": "pure / compiled, same run",
    "max": "kongtask compiled, at most",
    "min": "kongtask compiled, at least",
}


# ------------------------------------------------------------------ environment
def source_root() -> Path | None:
    """The kongtask checkout this package runs from, or None when it is installed."""
    root = Path(kongtask.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        if pyproject.is_file() and 'name = "kongtask"' in pyproject.read_text():
            return root
    except OSError:
        return None
    return None


def default_results_dir() -> Path:
    """``bench/results`` of the source tree, else ``./bench-results``."""
    root = source_root()
    if root is not None and (root / "bench").is_dir():
        return root / "bench" / "results"
    return Path.cwd() / "bench-results"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mb() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().total // (1024 * 1024))


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, OS and load: what the numbers depend on."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "load_average_at_start": load,
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git_revision(root: Path | None) -> str | None:
    if root is None or not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, Any]:
    from kongtask._core import IMPLEMENTATION

    return {
        "kongtask": kongtask.__version__,
        "kongtask_git": _git_revision(source_root()),
        "implementation": IMPLEMENTATION,
        **{
            name: _version(name)
            for name in ("asyncpg", "uvloop", "orjson", "Cython", "psutil", "matplotlib")
        },
    }


# --------------------------------------------------------------------- summary
def summarize_rounds(rounds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Median over rounds of every numeric top-level key."""
    keys: dict[str, list[float]] = {}
    for result in rounds:
        for key, value in result.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                keys.setdefault(key, []).append(float(value))
    return {key: m for key, values in keys.items() if (m := median(values)) is not None}


def metric_value(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], engine: str, metric: Metric
) -> float | None:
    values = summary.get(metric.scenario, {}).get(engine)
    if not values:
        return None
    if metric.key in values:
        return values[metric.key]
    return values.get(metric.fallback) if metric.fallback else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(summary: Mapping[str, Any], engines: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"scenario.key": {"kongtask/graphile-worker": r, "compiled/pure": r}}``."""
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics_for(summary):
        row: dict[str, Any] = {}
        kt = metric_value(summary, "kongtask", metric)
        if "graphile-worker" in engines:
            row["kongtask/graphile-worker"] = ratio(
                kt, metric_value(summary, "graphile-worker", metric)
            )
        if "kongtask-pure" in engines:
            row["compiled/pure"] = ratio(kt, metric_value(summary, "kongtask-pure", metric))
        if any(v is not None for v in row.values()):
            row["better"] = "higher" if metric.higher_is_better else "lower"
            out[f"{metric.scenario}.{metric.key}"] = row
    return out


def check_targets(summary: Mapping[str, Any], engines: Sequence[str]) -> list[dict[str, Any]]:
    """Each target with the value it was judged on; skipped when not measured."""
    out = []
    for target in TARGETS:
        metric = Metric(target.scenario, target.key, "", "", True, fallback=target.fallback)
        kt = metric_value(summary, "kongtask", metric)
        if target.kind == "ratio_gw":
            value = ratio(kt, metric_value(summary, "graphile-worker", metric))
            ok = None if value is None else value >= target.limit
        elif target.kind == "ratio_pure":
            value = ratio(kt, metric_value(summary, "kongtask-pure", metric))
            ok = None if value is None else value >= target.limit
        elif target.kind == "saving_pure":
            value = ratio(metric_value(summary, "kongtask-pure", metric), kt)
            ok = None if value is None else value >= target.limit
        elif target.kind == "max":
            value = kt
            ok = None if value is None else value <= target.limit
        else:
            value = kt
            ok = None if value is None else value >= target.limit
        if value is not None:
            out.append(
                {
                    "target": target.description,
                    "value": round(value, 3),
                    "limit": target.limit,
                    "measure": TARGET_MEASURES[target.kind],
                    "met": ok,
                }
            )
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "jobs/s":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def format_table(
    summary: Mapping[str, Any], engines: Sequence[str], labels: Mapping[str, str], processes: int
) -> str:
    """The end-of-run table: one row per metric, engines as columns, then ratios."""
    headers = ["scenario", "metric", "unit", *(labels[e] for e in engines)]
    with_gw = "graphile-worker" in engines and "kongtask" in engines
    with_pure = "kongtask-pure" in engines and "kongtask" in engines
    if with_gw:
        headers.append("kt/gw")
    if with_pure:
        headers.append("compiled/pure")
    headers.append("better")
    rows = []
    for metric in metrics_for(summary):
        values = [metric_value(summary, e, metric) for e in engines]
        if all(v is None for v in values):
            continue
        label = metric.label.replace("P processes", f"{processes} processes")
        row = [metric.group, label, metric.unit, *(_fmt(v, metric.unit) for v in values)]
        kt = metric_value(summary, "kongtask", metric)
        if with_gw:
            r = ratio(kt, metric_value(summary, "graphile-worker", metric))
            row.append("-" if r is None else f"{r:.2f}")
        if with_pure:
            r = ratio(kt, metric_value(summary, "kongtask-pure", metric))
            row.append("-" if r is None else f"{r:.2f}")
        row.append("higher" if metric.higher_is_better else "lower")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    numeric_from = 3

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i >= numeric_from else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


# ------------------------------------------------------------------------ files
def results_path(folder: Path, started: datetime) -> Path:
    """``bench-YYYYmmdd-HHMMSS.json``, never overwriting an earlier run."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{started:%Y%m%d-%H%M%S}"
    path = folder / f"{stem}.json"
    n = 1
    while path.exists():
        path = folder / f"{stem}-{n}.json"
        n += 1
    return path


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )


Panel = tuple[str, str, tuple[tuple[str, str, str], ...]]

_PANELS: tuple[Panel, ...] = (
    (
        "add_job -> handler start",
        "ms",
        (("latency", "p50", "p50"), ("latency", "p95", "p95"), ("latency", "p99", "p99")),
    ),
    ("Scheduled lateness", "ms", (("scheduled", "p50", "p50"), ("scheduled", "p99", "p99"))),
    (
        "Memory (RSS)",
        "MB",
        (("memory", "idle_rss_mb", "idle"), ("memory", "peak_rss_mb", "peak (drain)")),
    ),
    (
        "Start-up",
        "ms",
        (
            ("startup", "spawn_to_ready_ms", "spawn->ready"),
            ("startup", "spawn_floor_libraries_ms", "libs floor"),
            ("startup", "run_to_ready_ms", "run()->ready"),
        ),
    ),
)


def _short(jobs: int) -> str:
    """A queue size short enough for a tick label: 3k, 100k, 1M."""
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if jobs >= size and jobs % (size // 10) == 0:
            value = jobs / size
            return f"{value:g}{unit}"
    return f"{jobs:,}"


def _panels(summary: Mapping[str, Any]) -> list[Panel]:
    """Throughput and CPU per job (with a bar group per drain-from-spawn size), then the rest.

    Tick labels are two short lines ("spawn" over "100k"): spelled out on one
    line they ran into each other.
    """
    spawned = [
        (k, _short(jobs))
        for k in sorted(summary, key=lambda k: jobs_of(k) or 0)
        if (jobs := jobs_of(k)) is not None
    ]
    throughput = (
        ("enqueue", "jobs_per_sec", "enqueue"),
        ("drain", "jobs_per_sec", "drain"),
        ("processes", "jobs_per_sec", "drain\nxP"),
        *((k, "jobs_per_sec", f"spawn\n{n}") for k, n in spawned),
        ("leases", "claim_jobs_per_sec", "spawn\nclaims"),
        ("leases", "jobs_per_sec", "spawn\nleases"),
    )
    per_job = (
        ("drain", "cpu_us_per_job", "drain\nworker"),
        ("drain", "pg_cpu_us_per_job", "drain\nPG"),
        *(
            (k, key, f"spawn {n}\n{who}")
            for k, n in spawned
            for key, who in (("cpu_us_per_job", "worker"), ("pg_cpu_us_per_job", "PG"))
        ),
        ("payload", "tiny_cpu_us_per_job", "tiny\npayload"),
        ("payload", "cpu_us_per_job", "1.9 KB\npayload"),
    )
    return [("Throughput", "jobs/s", throughput), ("CPU per job", US_JOB, per_job), *_PANELS]


def _advantage_panel(ax: Any, summary: Mapping[str, Any]) -> None:
    """How many times better kongtask is than graphile-worker, per metric (>1: better)."""
    names: list[str] = []
    values: list[float] = []
    for metric in metrics_for(summary):
        if metric.scenario == "startup" and metric.key.startswith("spawn_floor"):
            continue
        if metric.unit == "s":
            continue  # the same comparison as its jobs/s row
        r = ratio(
            metric_value(summary, "kongtask", metric),
            metric_value(summary, "graphile-worker", metric),
        )
        if r is None or r <= 0:
            continue
        names.append(f"{metric.group}: {metric.label}")
        values.append(r if metric.higher_is_better else 1 / r)
    if not values:
        return
    ax.set_axis_on()
    ys = list(range(len(values)))[::-1]
    bars = ax.barh(ys, values, color=["#2a7ab9" if v >= 1 else "#c0392b" for v in values])
    ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values], fontsize=7, padding=2)
    ax.set_yticks(ys, names, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    # Room right of the longest bar for its label.
    ax.set_xlim(min(0.5, min(values) / 1.5), max(values) * 3)
    ax.set_title("kongtask vs graphile-worker (x better)")


def draw_chart(
    path: Path,
    summary: Mapping[str, Any],
    engines: Sequence[str],
    labels: Mapping[str, str],
    title: str,
) -> Path | None:
    """A PNG with one grouped bar panel per kind of number; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = _panels(summary)
    # Throughput and CPU per job hold the most bar groups: half a row each.
    # The other panels share the second row; the kongtask-vs-graphile-worker
    # panel, with its long metric names, gets the third.
    fig = plt.figure(figsize=(20, 13))
    grid = fig.add_gridspec(3, 4, height_ratios=(1, 1, 1.1))
    flat = [fig.add_subplot(grid[0, 0:2]), fig.add_subplot(grid[0, 2:4])]
    flat += [fig.add_subplot(grid[1, i]) for i in range(4)]
    flat.append(fig.add_subplot(grid[2, 1:3]))
    width = 0.8 / max(1, len(engines))
    colors = {"kongtask": "#2a7ab9", "kongtask-pure": "#8cbce0", "graphile-worker": "#e08a2a"}
    for ax, (name, unit, series) in zip(flat, panels, strict=False):
        shown = [
            (s, k, lab)
            for s, k, lab in series
            if any(
                metric_value(summary, e, Metric(s, k, "", "", True)) is not None for e in engines
            )
        ]
        if not shown:
            ax.set_axis_off()
            continue
        for j, engine in enumerate(engines):
            xs = [i + (j - (len(engines) - 1) / 2) * width for i in range(len(shown))]
            ys = [
                metric_value(summary, engine, Metric(s, k, "", "", True)) or 0.0
                for s, k, _ in shown
            ]
            bars = ax.bar(xs, ys, width, label=labels[engine], color=colors.get(engine))
            # Upright value labels only while they fit over their bars.
            crowded = unit == "jobs/s" or len(shown) * len(engines) > 6
            ax.bar_label(
                bars,
                labels=[_fmt(y, unit) if y else "" for y in ys],
                fontsize=6 if crowded else 7,
                rotation=90 if crowded else 0,
                padding=2,
            )
        ax.set_xticks(
            range(len(shown)), [lab for _, _, lab in shown], fontsize=7 if len(shown) > 5 else 8
        )
        ax.set_title(f"{name} ({unit})")
        ax.margins(y=0.35 if crowded else 0.25)
    # The first panel with bars carries the legend (a run of a few scenarios
    # may leave the throughput panel empty).
    for ax in flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    for ax in flat[len(panels) :]:
        ax.set_axis_off()
    if "kongtask" in engines and "graphile-worker" in engines and len(flat) > len(panels):
        _advantage_panel(flat[len(panels)], summary)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
