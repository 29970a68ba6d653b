"""Transaction control and session settings of the fetch connections (see :mod:`kongtask.leases`).

These take no schema and no values; they are here so that every statement
kongtask sends is found in :mod:`kongtask.queries`.
"""

from __future__ import annotations

__all__ = ["COMMIT", "GENERIC_PLANS", "ROLLBACK", "begin_lease_sql"]

COMMIT = "commit"
ROLLBACK = "rollback"
#: The fetch and settle statements' plans do not depend on their parameters.
GENERIC_PLANS = "set plan_cache_mode = force_generic_plan"


def begin_lease_sql(idle_ms: int) -> str:
    """Open a lease's transaction with its own idle timeout.

    SET takes no bind parameters, so the timeout is formatted in; ``int()``
    keeps it a plain number whatever the caller passes.
    """
    return f"begin; set local idle_in_transaction_session_timeout = '{int(idle_ms)}ms'"
