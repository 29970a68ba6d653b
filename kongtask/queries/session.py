"""Transaction control and session settings of the fetch connections (see
:mod:`kongtask.leases`) and of the result writer's (:mod:`kongtask.completion`).

These take no schema and no values; they are here so that every statement
kongtask sends is found in :mod:`kongtask.queries`.
"""

from __future__ import annotations

__all__ = ["ANY_SIZE_PLANS", "COMMIT", "ROLLBACK", "begin_lease_sql"]

COMMIT = "commit"
ROLLBACK = "rollback"
#: How the connections that fetch and write results plan their statements.
#:
#: Once each (generic plans): their plans do not depend on their parameters.
#: Never with a sequential scan: a generic plan is made for the table as it is
#: on first use, and on an empty or small queue the claim's update and the
#: result writer's delete by row address were planned as scans of the whole
#: table (row addresses only win the estimate on a table with many rows); a
#: pool that started idle then ran those plans on every batch of the next
#: burst, 2 s a fetch at 200,000 jobs, until an ANALYZE. Each of these
#: statements is written for an index or a row-address (TID) scan. Without JIT:
#: the cost that keeps sequential scans out lifts every plan over
#: ``jit_above_cost``, and compiling one (again at each execution) took 0.4 s.
ANY_SIZE_PLANS = "set plan_cache_mode = force_generic_plan; set enable_seqscan = off; set jit = off"


def begin_lease_sql(idle_ms: int) -> str:
    """Open a lease's transaction with its own idle timeout.

    SET takes no bind parameters, so the timeout is formatted in; ``int()``
    keeps it a plain number whatever the caller passes.
    """
    return f"begin; set local idle_in_transaction_session_timeout = '{int(idle_ms)}ms'"
