"""``kongtask bench --quick``: every scenario runs and every job runs exactly once.

A CI smoke of the benchmark harness. It asserts correctness only (every job
ran, nothing left behind, sample counts, CPU figures present, the results
file), never speed: speed on a shared CI runner means nothing. The bench
creates its own database on the test server; the ``database_url`` fixture
only says which server that is.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from kongtask import WorkerUtils
from kongtask.benchmark import main, payload, report, spawn
from kongtask.benchmark.common import percentile, summarize
from kongtask.benchmark.cpu import locate_server, process_cpu_s
from kongtask.benchmark.database import split_password, with_database
from kongtask.benchmark.harness import QUICK, SCENARIOS, _compiled_available, _embedded_notes
from kongtask.benchmark.node import default_bench_dir
from kongtask.benchmark.report import source_root
from kongtask.db import quote_ident
from kongtask.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(240)

BENCH_DB = "kongtask_bench"
KT_SCENARIOS = ("enqueue", "drain", "latency", "scheduled", "memory", "startup", "processes")
GW_SCENARIOS = ("enqueue", "drain", "latency", "scheduled", "memory", "startup")
#: Results key of the quick drain-from-spawn run (one queue size).
SPAWN_KEY = spawn.key(QUICK["spawn_jobs"][0])
#: Scenarios whose results carry CPU per job, for each side.
KT_CPU_SCENARIOS = ("enqueue", "drain", "memory", "processes", SPAWN_KEY)
GW_CPU_SCENARIOS = ("enqueue", "drain", "memory", SPAWN_KEY)


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
    return {
        "code": code,
        "doc": document,
        "dir": out,
        "compare": compare,
        "database_url": database_url,
        "server_local": _server_is_local(database_url),
    }


def _server_is_local(database_url: str) -> bool:
    """Whether this machine can read the server's CPU: its postmaster.pid is readable
    here and names a live process (decided without the bench's own code)."""

    async def data_directory() -> str | None:
        conn = await asyncpg.connect(database_url)
        try:
            return str(await conn.fetchval("show data_directory"))
        except asyncpg.InsufficientPrivilegeError:
            return None
        finally:
            await conn.close()

    folder = asyncio.run(data_directory())
    if folder is None:
        return False
    try:
        pid = int((Path(folder) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}/stat").exists()


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


def test_drain_from_spawn_runs_every_job_once(bench_run: dict[str, Any]) -> None:
    doc = bench_run["doc"]
    size = QUICK["spawn_jobs"][0]
    engines = [*_kongtask_engines(doc), *(["graphile-worker"] if bench_run["compare"] else [])]
    for engine in engines:
        (r,) = _rounds(doc, SPAWN_KEY, engine)
        assert (r["jobs"], r["handled"], r["checksum_ok"]) == (size, size, True), (engine, r)
        assert (r["remaining"], r["locked"], r["exit_code"]) == (0, 0, 0), (engine, r)
        assert r["seconds"] > 0 and r["jobs_per_sec"] > 0 and r["polls"] >= 1
        assert r["empty_poll_ms"] == 100
    for engine in _kongtask_engines(doc):
        (r,) = _rounds(doc, SPAWN_KEY, engine)
        # The CLI as a user runs it: no tuning flag, so kongtask's defaults are measured.
        assert r["command"][1:4] == ["-m", "kongtask", "run"]
        assert not any(
            a.startswith(("--local-queue", "--complete-batch", "--max-pool")) for a in r["command"]
        )
        assert r["impl"] == doc["engines"][engine]["implementation"]
    assert doc["ratios"][f"{SPAWN_KEY}.jobs_per_sec"]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_cpu_per_job_is_reported(bench_run: dict[str, Any]) -> None:
    """Worker CPU is always measured; PostgreSQL's whenever the server is on this machine.

    A per-window PostgreSQL figure may round to zero (``/proc`` counts 10 ms
    ticks, and a quick window is a few of them), so each must be a number >= 0
    and their sum per engine above zero.
    """
    doc = bench_run["doc"]
    local = bench_run["server_local"]
    assert doc["postgres"]["cpu"]["available"] is local, doc["postgres"]["cpu"]
    if not local:
        assert doc["postgres"]["cpu"]["reason"]
    sides = [(e, KT_CPU_SCENARIOS) for e in _kongtask_engines(doc)]
    if bench_run["compare"]:
        sides.append(("graphile-worker", GW_CPU_SCENARIOS))
    for engine, scenarios in sides:
        server_total = 0.0
        for scenario in scenarios:
            for r in _rounds(doc, scenario, engine):
                assert _number(r["cpu_us_per_job"]) and r["cpu_us_per_job"] > 0, (engine, r)
                assert "pg_cpu_us_per_job" in r, (engine, scenario)
                if local:
                    assert _number(r["pg_cpu_us_per_job"]) and r["pg_cpu_us_per_job"] >= 0
                    server_total += r["pg_cpu_us_per_job"]
                else:
                    assert r["pg_cpu_us_per_job"] is None
        if local:
            assert server_total > 0, engine
            (r,) = _rounds(doc, SPAWN_KEY, engine)
            assert _number(r["pg_cpu_us_per_job"]) and r["pg_cpu_us_per_job"] >= 0
    if local:
        assert doc["summary"]["drain"]["kongtask"]["pg_cpu_us_per_job"] >= 0
        assert "drain.cpu_us_per_job" in doc["ratios"]


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
    assert set(doc["scenarios"]) == {*KT_SCENARIOS, spawn.SCENARIO, payload.SCENARIO}
    assert doc["sizes"]["spawn_jobs"] == list(QUICK["spawn_jobs"])
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
    assert summarize([3.0, 1.0, 2.0]) == {
        "min": 1.0,
        "p50": 2.0,
        "p95": 2.9,
        "p99": 2.98,
        "max": 3.0,
    }


def test_dsn_handling_keeps_password_off_command_lines() -> None:
    dsn, password = split_password("postgresql://u:s%40cret@h:5432/db?sslmode=require")
    assert (dsn, password) == ("postgresql://u@h:5432/db?sslmode=require", "s@cret")
    assert split_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert (
        with_database("postgresql://u@h:5432/app?dbname=x&sslmode=require", "kongtask_bench")
        == "postgresql://u@h:5432/kongtask_bench?sslmode=require"
    )
    assert (
        with_database("postgresql://postgres:@/postgres?host=/tmp/s", "b")
        == "postgresql://postgres:@/b?host=/tmp/s"
    )
    assert split_password("postgresql://u@h/db?password=x&a=1") == ("postgresql://u@h/db?a=1", "x")


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--scenario", "nope"])
    assert exc.value.code == 2
    assert "unknown scenario" in capsys.readouterr().err
    assert "implementations" in SCENARIOS
    assert spawn.SCENARIO in SCENARIOS


@pytest.mark.parametrize("sizes", ["0", "1000,x", ","])
def test_bad_spawn_sizes_are_a_usage_error(sizes: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--spawn-jobs", sizes])
    assert exc.value.code == 2


def test_spawn_keys_round_trip() -> None:
    assert spawn.jobs_of(spawn.key(100_000)) == 100_000
    assert spawn.jobs_of("drain") is None
    assert spawn.jobs_of("drain-from-spawn@x") is None


def test_a_server_elsewhere_has_no_cpu_figure(tmp_path: Path) -> None:
    """A data directory that is not here, and a backend pid that is no local process."""
    found = locate_server(str(tmp_path / "nowhere"), 5432, 0.0, 2**22 + 12345)
    assert not found.available and found.sample() is None
    assert "not on this machine" in (found.reason or "")
    # A postmaster.pid of another server (other port) is not taken for this one.
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n0\n1\n")
    assert not locate_server(str(tmp_path), 5432, 0.0, 2**22 + 12345).available
    assert process_cpu_s(os.getpid()) is not None


def test_outside_script_drains_the_queue_and_reports_cpu(bench_run: dict[str, Any]) -> None:
    """bench/outside/spawn_to_empty.sh (bash, psql, /proc, date) on kongtask's CLI."""
    root = source_root()
    script = root / "bench" / "outside" / "spawn_to_empty.sh" if root else None
    if (
        script is None
        or not script.is_file()
        or shutil.which("psql") is None
        or shutil.which("bash") is None
    ):
        pytest.skip("needs the source tree, bash and psql")
    bench_dsn = with_database(bench_run["database_url"], BENCH_DB)
    dsn, password = split_password(bench_dsn)  # the password goes in PGPASSWORD
    schema = f"outside_{os.getpid()}"

    async def migrate() -> None:
        async with WorkerUtils(bench_dsn, schema=schema, max_pool_size=1) as utils:
            await utils.migrate()

    async def drop() -> None:
        conn = await asyncpg.connect(bench_dsn)
        try:
            await conn.execute(f"drop schema {quote_ident(schema)} cascade")
        finally:
            await conn.close()

    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    asyncio.run(migrate())
    try:
        done = subprocess.run(
            [
                "bash",
                str(script),
                "-d",
                dsn,
                "-s",
                schema,
                "-n",
                "2000",
                "-t",
                "120",
                "--",
                sys.executable,
                "-m",
                "kongtask",
                "run",
                "-c",
                dsn,
                "--schema",
                schema,
                "--tasks",
                "kongtask.benchmark.noop_tasks",
                "-j",
                "24",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            check=False,
        )
    finally:
        asyncio.run(drop())
    assert done.returncode == 0, done.stderr[-2000:]
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert (result["jobs"], result["remaining"], result["locked"], result["exit_code"]) == (
        2000,
        0,
        0,
        0,
    )
    assert result["worker_cpu_us_per_job"] > 0


def test_results_dir_is_under_the_source_tree() -> None:
    from kongtask.benchmark.report import default_results_dir, source_root

    root = source_root()
    if root is None:
        assert default_results_dir() == Path.cwd() / "bench-results"
    else:
        assert default_results_dir() == root / "bench" / "results"


def test_payload_scenario_runs_both_twins(bench_run: dict[str, Any]) -> None:
    """The payload scenario: every job of both queues ran, figures present, no problems."""
    doc = bench_run["doc"]
    engines = ("kongtask", "kongtask-pure") if _compiled_available() else ("kongtask",)
    for engine in engines:
        for r in _rounds(doc, payload.SCENARIO, engine):
            assert r["jobs"] == QUICK["payload_jobs"]
            assert r["warnings"] == []
            assert 1500 <= r["payload_bytes"] <= 2000  # issue 20's ~1.7 KB
            for key in ("cpu_us_per_job", "tiny_cpu_us_per_job", "orjson_loads_us"):
                assert r[key] is not None, (engine, key)
            # The figure is the median of the interleaved processes, one per round.
            rounds = r["large_cpu_us_per_job_rounds"]
            assert len(rounds) == r["rounds"] == payload.ROUNDS
            assert sorted(rounds)[len(rounds) // 2] == r["cpu_us_per_job"]
    assert "graphile-worker" not in doc["results"][payload.SCENARIO]


def test_large_payload_shape() -> None:
    """A nested object, 20 small objects in a list, 200 non-ASCII characters."""
    body = payload.large_payload()
    assert len(body["items"]) == 20 and all(isinstance(i, dict) for i in body["items"])
    assert isinstance(body["account"]["plan"], dict)
    assert sum(1 for c in payload.large_payload_text() if ord(c) > 127) == 200


def test_targets_say_what_they_compare(bench_run: dict[str, Any]) -> None:
    for target in bench_run["doc"]["targets"]:
        assert target["measure"] and target["limit"] is not None, target


def test_embedded_notes_say_how_to_stop_a_server_left_running(tmp_path: Path) -> None:
    left = EmbeddedServer("postgresql://x", tmp_path, True, False, "pgserver", "pg_ctl stop")
    notes = " ".join(_embedded_notes(left))
    assert "left running" in notes and "pg_ctl stop" in notes and "'pgserver'" in notes
    ours = EmbeddedServer("postgresql://x", tmp_path, False, True, None, "pg_ctl stop")
    assert "stops it when it ends" in " ".join(_embedded_notes(ours))


@pytest.mark.parametrize(
    ("jobs", "label"), [(3000, "3k"), (100_000, "100k"), (1_000_000, "1M"), (12_345, "12,345")]
)
def test_chart_sizes_are_short(jobs: int, label: str) -> None:
    assert report._short(jobs) == label
