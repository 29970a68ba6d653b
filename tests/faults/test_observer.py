"""The observer's arithmetic on made-up logs: the fault tests are only as good as it.

Each case is a small log whose overlaps, repeats and lost jobs are known, so
a verdict that stopped seeing one of them fails here, without a database.
"""

from __future__ import annotations

from .harness import (
    Event,
    Fault,
    analyse,
    rerun_too_early,
    serial_overlaps,
    unexplained_repeats,
)

MS = 1_000_000  # nanoseconds


def _log(*lines: str) -> list[Event]:
    """``"start 1 1 100 5"``: kind, job, attempts, pid, time in ms."""
    events = []
    for line in lines:
        kind, job, attempts, pid, at = line.split()
        events.append(Event(kind, int(job), int(attempts), int(pid), int(at) * MS))
    return events


def test_a_run_lives_until_its_end_or_its_process_dies() -> None:
    events = _log(
        "start 1 1 100 0",  # pid 100 is killed at 50 ms, mid-run
        "start 1 2 200 60",  # after the death: a retry, no overlap
        "end 1 2 200 70",
        "start 2 1 200 80",  # pid 300 starts job 2 while pid 200 still runs it
        "start 2 1 300 90",
        "end 2 1 300 95",
        "end 2 1 200 99",
    )
    verdict = analyse(events, {100: 50 * MS}, [1, 2], remaining=set())
    assert [(a.job, a.pid, b.pid) for a, b in verdict.overlaps] == [(2, 200, 300)]
    assert [run.outcome for run in verdict.runs if run.job == 1] == ["death", "end"]
    assert verdict.repeats == [] and verdict.lost == []


def test_one_process_running_a_job_twice_at_once_is_an_overlap() -> None:
    events = _log("start 1 1 100 0", "start 1 1 100 5", "end 1 1 100 10", "end 1 1 100 20")
    verdict = analyse(events, {}, [1], remaining=set())
    assert len(verdict.overlaps) == 1 and not verdict.anomalies


def test_repeats_and_lost_jobs() -> None:
    events = _log(
        "start 1 1 100 0",
        "end 1 1 100 10",
        "start 1 2 200 400",  # a repeat, 390 ms after the success
        "end 1 2 200 410",
        "start 2 1 100 0",  # job 2 failed, its row is gone: lost
        "fail 2 1 100 5",
    )
    verdict = analyse(events, {}, [1, 2, 3], remaining={3})
    assert [(a.finish, b.start) for a, b in verdict.repeats] == [(10 * MS, 400 * MS)]
    assert verdict.lost == [2]
    assert verdict.successes == {1: 2}


def test_a_repeat_needs_a_fault_soon_after_the_success_and_one_per_fault() -> None:
    events = _log(
        "start 1 1 100 0",
        "end 1 1 100 10",
        "start 1 2 200 400",
        "end 1 2 200 410",
        "start 1 3 300 900",  # a second repeat: pid 200 never died
    )
    verdict = analyse(events, {100: 20 * MS}, [1], remaining=set())
    death = [Fault("death", 20 * MS, 20 * MS, 100)]
    assert [b.start for _, b in unexplained_repeats(verdict.repeats, death, 0.5)] == [900 * MS]
    assert len(unexplained_repeats(verdict.repeats, death, 0.005)) == 2  # 10 ms before: too far


def test_a_named_queue_must_not_run_two_jobs_at_once() -> None:
    events = _log(
        "start 1 1 100 0",
        "end 1 1 100 10",
        "start 2 1 200 11",  # after job 1: fine
        "start 3 1 300 15",  # while job 2 runs: an overlap of the queue
        "end 2 1 200 20",
        "end 3 1 300 25",
    )
    runs = analyse(events, {}, [1, 2, 3], remaining=set()).runs
    pairs = serial_overlaps(runs, {1: "q", 2: "q", 3: "q"})
    assert [(a.job, b.job) for a, b in pairs] == [(2, 3)]
    assert serial_overlaps(runs, {1: "q", 2: "q", 3: "other"}) == []


def test_a_rerun_must_wait_the_backoff() -> None:
    events = _log("start 1 1 100 0", "fail 1 1 100 10", "start 1 2 100 2000")
    failed, again = analyse(events, {}, [1], remaining={1}).runs
    assert rerun_too_early(failed, again)  # e¹ ≈ 2.72 s had not passed
    late = _log("start 1 1 100 0", "fail 1 1 100 10", "start 1 2 100 2800")
    assert not rerun_too_early(*analyse(late, {}, [1], remaining={1}).runs)
