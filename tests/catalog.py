"""A normalised description of a schema's catalog, for comparing two installs.

Used by the schema test (kongtask vs the committed description of
graphile-worker 0.17.3's schema) and by ``ci/describe_graphile_worker_schema.py``
which generated that description from the real npm package. The schema name
is replaced by ``<schema>`` so installs under different names compare equal.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

_TABLES = """
select c.relname as name, c.relkind::text as kind, c.relrowsecurity as rls
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1 and c.relkind in ('r', 'v', 'S', 'c')
order by c.relname
"""

_COLUMNS = """
select c.relname as rel, a.attname as name, a.attnum as position,
       format_type(a.atttypid, a.atttypmod) as type, a.attnotnull as not_null,
       pg_get_expr(d.adbin, d.adrelid) as default_expr,
       a.attgenerated::text as generated, a.attidentity::text as identity
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where n.nspname = $1 and a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'v', 'c')
order by c.relname, a.attnum
"""

_CONSTRAINTS = """
select c.relname as rel, k.conname as name, k.contype::text as type,
       pg_get_constraintdef(k.oid) as definition
from pg_constraint k
join pg_class c on c.oid = k.conrelid
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1
order by c.relname, k.conname
"""

_INDEXES = """
select i.relname as name, pg_get_indexdef(i.oid) as definition
from pg_index x
join pg_class i on i.oid = x.indexrelid
join pg_namespace n on n.oid = i.relnamespace
where n.nspname = $1
order by i.relname
"""

_FUNCTIONS = """
select p.proname as name,
       pg_get_function_arguments(p.oid) as arguments,
       pg_get_function_result(p.oid) as result,
       l.lanname as language, p.proisstrict as strict, p.provolatile::text as volatility,
       p.prosecdef as security_definer
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_language l on l.oid = p.prolang
where n.nspname = $1
order by p.proname, pg_get_function_identity_arguments(p.oid)
"""

_SEQUENCES = """
select c.relname as name, format_type(s.seqtypid, null) as type, s.seqstart as start,
       s.seqincrement as increment, s.seqcache as cache, s.seqcycle as cycle
from pg_sequence s
join pg_class c on c.oid = s.seqrelid
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1
order by c.relname
"""


def _normalise(value: Any, schema: str) -> Any:
    if isinstance(value, str):
        quoted = '"' + schema.replace('"', '""') + '"'
        value = value.replace(quoted + ".", "<schema>.")
        return re.sub(r"(?<![\w\"])" + re.escape(schema) + r"\.", "<schema>.", value)
    return value


async def describe_schema(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    """Everything a client can observe about the schema's shape, as plain data."""

    async def rows(sql: str) -> list[dict[str, Any]]:
        return [
            {key: _normalise(val, schema) for key, val in dict(row).items()}
            for row in await conn.fetch(sql, schema)
        ]

    return {
        "relations": await rows(_TABLES),
        "columns": await rows(_COLUMNS),
        "constraints": await rows(_CONSTRAINTS),
        "indexes": await rows(_INDEXES),
        "functions": await rows(_FUNCTIONS),
        "sequences": await rows(_SEQUENCES),
    }
