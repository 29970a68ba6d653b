"""Statements of the start-up probe for a transaction-pooling proxy (``kongtask.pooling``)."""

from __future__ import annotations

#: Whether the server session this statement runs in holds a prepared statement
#: of this name (``pg_prepared_statements`` lists only the current session's).
PREPARED_HERE = "select exists (select from pg_prepared_statements where name = $1)"
#: What the probe prepares on the first connection: any statement would do.
PROBE = "select 1"
#: The backend serving this statement, to compare with the one the connection
#: was told of at login (``BackendKeyData``).
BACKEND_PID = "select pg_backend_pid()"
