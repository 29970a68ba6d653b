"""``kongtask bench --quick --scenario pgbouncer,fleet,leases``: both sides of each step
drain every job exactly once (correctness only, never speed: see test_bench_smoke.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from kongtask.benchmark import bouncer, fleet, main
from kongtask.benchmark.engines import graphile_worker_engine
from kongtask.benchmark.harness import QUICK, SCENARIOS, build_parser, make_plan

from .interop.support import in_ci

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def fleet_run(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-fleet")
    argv = ["--quick", "-c", database_url, "--scenario", "pgbouncer,fleet,leases"]
    code = main([*argv, "--output", str(out), "--no-chart"])
    (path,) = sorted(out.glob("bench-*.json"))
    return {"code": code, "doc": orjson.loads(path.read_bytes())}


def _round(doc: dict[str, Any], scenario: str) -> dict[str, Any]:
    (result,) = doc["results"][scenario]["kongtask"]
    assert "error" not in result, result["error"]
    return result


def _drained_once(
    result: dict[str, Any], prefix: str, processes: int, jobs: int = QUICK["processes_jobs"]
) -> None:
    got = {key: result[prefix + key] for key in ("jobs", "handled", "remaining", "locked")}
    assert got == {"jobs": jobs, "handled": jobs, "remaining": 0, "locked": 0}, (prefix, result)
    assert result[prefix + "checksum_ok"] is True
    assert len(result[prefix + "per_process"]) == processes
    assert result[prefix + "jobs_per_sec"] > 0 and result[prefix + "cpu_us_per_job"] > 0
    assert prefix + "pg_cpu_us_per_job" in result


def test_no_problems(fleet_run: dict[str, Any]) -> None:
    assert fleet_run["doc"]["problems"] == []
    assert fleet_run["code"] == 0
    assert fleet_run["doc"]["scenarios"] == ["pgbouncer", "fleet", "leases"]


def test_fleet_four_processes_and_one(fleet_run: dict[str, Any]) -> None:
    result = _round(fleet_run["doc"], "fleet")
    _drained_once(result, "", fleet.FLEET_PROCESSES)
    _drained_once(result, "one_", 1)
    assert result["processes"] == fleet.FLEET_PROCESSES and result["speedup"] > 0


def test_pgbouncer_direct_and_through(fleet_run: dict[str, Any]) -> None:
    result = _round(fleet_run["doc"], "pgbouncer")
    if bouncer.binary() is None:
        if in_ci():
            pytest.fail(".ci/run installs pgbouncer: the scenario must run in CI")
        assert result["skipped"] == "pgbouncer is not installed"
        return
    _drained_once(result, "", 1, QUICK["drain_jobs"])
    _drained_once(result, "direct_", 1, QUICK["drain_jobs"])
    assert "--no-prepared-statements" in result["command"]
    assert "--listen-dsn" in result["command"]
    assert "--no-prepared-statements" not in result.get("direct_command", [])
    assert result["bouncer_cpu_us_per_job"] is not None and result["ratio_to_direct"] > 0


def test_leases_and_claims_each_drain_every_job_once(fleet_run: dict[str, Any]) -> None:
    result = _round(fleet_run["doc"], "leases")
    _drained_once(result, "", 1, QUICK["drain_jobs"])
    _drained_once(result, "claim_", 1, QUICK["drain_jobs"])
    assert result["command"][-2:] == ["--lease-time", str(fleet.LEASE_TIME_MS)]
    assert "--lease-time" not in result["claim_command"]
    assert result["ratio_to_claim"] > 0


def test_fleet_scenarios_are_asked_for_by_name_and_kongtask_only() -> None:
    default = make_plan(build_parser().parse_args([]), "x").scenarios
    assert not set(fleet.SCENARIOS) & set(default)
    assert set(fleet.SCENARIOS) <= set(SCENARIOS)
    # graphile-worker's bench.js has none of them (a run that tried, failed).
    node = graphile_worker_engine("s", "node", Path("."))
    assert [name for name in fleet.SCENARIOS if node.supports(name)] == []
    assert node.supports("drain")
    chosen = make_plan(build_parser().parse_args(["--scenario", "fleet"]), "x").scenarios
    assert chosen == ["fleet"]


def test_bouncer_reads_the_server_from_a_dsn() -> None:
    assert bouncer._server("postgresql://u:p%40ss@db.example:6000/app?sslmode=require") == (
        "db.example",
        6000,
        "app",
        "u",
        "p@ss",
    )
