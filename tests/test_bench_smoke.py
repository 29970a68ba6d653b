"""``kongtask bench --quick``: every scenario runs and every job runs exactly once.

A CI smoke of the benchmark harness. It asserts correctness only (every job
ran, nothing left behind, sample counts, the results file), never speed:
speed on a shared CI runner means nothing. The bench creates its own
database on the test server; the ``database_url`` fixture only says which
server that is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from kongtask.benchmark import main
from kongtask.benchmark.common import percentile, summarize
from kongtask.benchmark.database import split_password, with_database
from kongtask.benchmark.harness import QUICK, SCENARIOS, _compiled_available
from kongtask.benchmark.node import default_bench_dir

pytestmark = pytest.mark.timeout(240)

BENCH_DB = "kongtask_bench"
KT_SCENARIOS = ("enqueue", "drain", "latency", "scheduled", "memory", "startup", "processes")
GW_SCENARIOS = ("enqueue", "drain", "latency", "scheduled", "memory", "startup")


def _can_compare() -> bool:
    """graphile-worker joins the smoke when node and its bench folder are there
    (CI runs ``npm ci`` in bench/graphile-worker first; a missing node_modules
    is installed by the bench itself if npm exists)."""
    folder = default_bench_dir()
    if folder is None or shutil.which("node") is None:
        return False
    return (folder / "node_modules" / "graphile-worker").is_dir() or shutil.which("npm") is not None


@pytest.fixture(scope="module")
def bench_run(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run of every scenario (plus graphile-worker when possible)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "-c", database_url, "--output", str(out)]
    compare = _can_compare()
    if compare:
        argv += ["--compare", "graphile-worker"]
    code = main(argv)
    files = sorted(out.glob("bench-*.json"))
    assert len(files) == 1, f"expected one results file in {out}, found {files}"
    document = orjson.loads(files[0].read_bytes())
    return {"code": code, "doc": document, "dir": out, "compare": compare,
            "database_url": database_url}


def _rounds(doc: dict[str, Any], scenario: str, engine: str) -> list[dict[str, Any]]:
    rounds = doc["results"].get(scenario, {}).get(engine)
    assert rounds, f"no {scenario} result for {engine}"
    for result in rounds:
        assert "error" not in result, f"{engine} {scenario}: {result['error']}"
    return rounds


def _kongtask_engines(doc: dict[str, Any]) -> list[str]:
    return [name for name in ("kongtask", "kongtask-pure") if name in doc["engines"]]


def test_exit_code_and_no_problems(bench_run: dict[str, Any]) -> None:
    assert bench_run["doc"]["problems"] == []
    assert bench_run["code"] == 0


def test_engines_and_implementations(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    engines = doc["engines"]
    if _compiled_available():
        assert set(_kongtask_engines(doc)) == {"kongtask", "kongtask-pure"}
        assert all(r["impl"] == "cython" for r in _rounds(doc, "drain", "kongtask"))
        assert all(r["impl"] == "python" for r in _rounds(doc, "drain", "kongtask-pure"))
    else:
        assert _kongtask_engines(doc) == ["kongtask"]
        assert engines["kongtask"]["implementation"] == "python"
    assert ("graphile-worker" in engines) == bench_run["compare"]


@pytest.mark.parametrize("scenario", KT_SCENARIOS)
def test_every_kongtask_scenario_ran(bench_run: dict[str, Any], scenario: str) -> None:
    doc = bench_run["doc"]
    for engine in _kongtask_engines(doc):
        assert len(_rounds(doc, scenario, engine)) == QUICK["rounds"]


def test_drain_runs_every_job_exactly_once(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    for engine in _kongtask_engines(doc):
        for scenario, size in (("drain", QUICK["drain_jobs"]), ("memory", QUICK["memory_jobs"])):
            for r in _rounds(doc, scenario, engine):
                assert (r["jobs"], r["started"], r["remaining"]) == (size, size, 0), (engine, r)
                assert (r["duplicates"], r["missing"], r["out_of_range"]) == (0, 0, 0), (engine, r)
                assert r["jobs_per_sec" if scenario == "drain" else "seconds"] > 0


def test_processes_run_every_job_exactly_once(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    for engine in _kongtask_engines(doc):
        for r in _rounds(doc, "processes", engine):
            assert r["processes"] == 2
            assert len(r["per_process"]) == 2
            assert r["checksum_ok"] is True, r
            jobs = QUICK["processes_jobs"]
            assert (r["started"], r["duplicates"], r["remaining"]) == (jobs, 0, 0)


def test_sample_counts(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    for engine in _kongtask_engines(doc):
        (lat,) = _rounds(doc, "latency", engine)
        assert lat["samples"] == QUICK["latency_samples"]
        assert lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
        (sched,) = _rounds(doc, "scheduled", engine)
        assert sched["samples"] == QUICK["scheduled_samples"]
        (enq,) = _rounds(doc, "enqueue", engine)
        assert enq["jobs"] == QUICK["enqueue_jobs"]
        (start,) = _rounds(doc, "startup", engine)
        assert start["samples"] == QUICK["startup_samples"]
        assert len(start["spawn_samples"]) == QUICK["spawn_samples"]
        assert start["run_to_ready_ms"] > 0 and start["spawn_to_ready_ms"] > 0
        (mem,) = _rounds(doc, "memory", engine)
        assert 0 < mem["idle_rss_mb"] <= mem["peak_rss_mb"]


def test_graphile_worker_side(bench_run: dict[str, Any]) -> None:
    if not bench_run["compare"]:
        pytest.skip("node or bench/graphile-worker is not available")
    doc = bench_run["doc"]
    for scenario in GW_SCENARIOS:
        _rounds(doc, scenario, "graphile-worker")
    (drain,) = _rounds(doc, "drain", "graphile-worker")
    assert (drain["jobs"], drain["remaining"]) == (QUICK["drain_jobs"], 0)
    (lat,) = _rounds(doc, "latency", "graphile-worker")
    assert lat["samples"] == QUICK["latency_samples"]
    assert "processes" not in doc["results"] or "graphile-worker" not in doc["results"]["processes"]
    assert "drain.jobs_per_sec" in doc["ratios"]
    assert doc["node"]["graphile_worker"] == "0.17.3"


def test_results_file_describes_the_run(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    for key in ("cores", "cpu_model", "memory_mb", "os"):
        assert doc["machine"][key]
    assert doc["postgres"]["version"].startswith("PostgreSQL")
    for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections", "work_mem"):
        assert doc["postgres"]["settings"][name]
    assert doc["postgres"]["database"] == BENCH_DB
    assert doc["packages"]["asyncpg"] and doc["packages"]["implementation"]
    assert set(doc["scenarios"]) == set(KT_SCENARIOS)
    _, password = split_password(bench_run["database_url"])
    if password:
        assert password not in orjson.dumps(doc).decode()
    if doc["chart"]:
        assert (bench_run["dir"] / doc["chart"]).is_file()


async def test_schemas_are_dropped(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    conn = await asyncpg.connect(with_database(bench_run["database_url"], BENCH_DB))
    try:
        left = await conn.fetch(
            "select nspname from pg_namespace where nspname = any($1::text[])",
            [engine["schema"] for engine in doc["engines"].values()],
        )
    finally:
        await conn.close()
    assert left == []


# ---------------------------------------------------------------- pure helpers
def test_percentile_matches_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0.5) == 2.5
    assert percentile(values, 0.99) == pytest.approx(3.97)
    assert percentile([], 0.5) is None
    assert summarize([3.0, 1.0, 2.0]) == {"min": 1.0, "p50": 2.0, "p95": 2.9, "p99": 2.98,
                                          "max": 3.0}


def test_dsn_handling_keeps_password_off_command_lines() -> None:
    dsn, password = split_password("postgresql://u:s%40cret@h:5432/db?sslmode=require")
    assert (dsn, password) == ("postgresql://u@h:5432/db?sslmode=require", "s@cret")
    assert split_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert with_database("postgresql://u@h:5432/app?dbname=x&sslmode=require", "kongtask_bench") \
        == "postgresql://u@h:5432/kongtask_bench?sslmode=require"
    assert with_database("postgresql://postgres:@/postgres?host=/tmp/s", "b") \
        == "postgresql://postgres:@/b?host=/tmp/s"
    assert split_password("postgresql://u@h/db?password=x&a=1") == ("postgresql://u@h/db?a=1", "x")


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--scenario", "nope"])
    assert exc.value.code == 2
    assert "unknown scenario" in capsys.readouterr().err
    assert "implementations" in SCENARIOS


def test_results_dir_is_under_the_source_tree() -> None:
    from kongtask.benchmark.report import default_results_dir, source_root

    root = source_root()
    if root is None:
        assert default_results_dir() == Path.cwd() / "bench-results"
    else:
        assert default_results_dir() == root / "bench" / "results"
