"""Deterministic inputs for the micro benches: rows, job specs and cron items.

Payloads follow what job queues usually carry: mostly small objects of ids,
some notification-sized ones, a few bulky ones (an order with line items).
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

NOW = datetime(2026, 3, 1, 12, 0, 7, tzinfo=timezone.utc)


def small_payload(i: int) -> dict[str, Any]:
    """~60 bytes: the typical "do X to entity N" job."""
    return {"id": 100_000 + i, "user_id": str(uuid.UUID(int=i * 7919))}


def medium_payload(i: int) -> dict[str, Any]:
    """~180 bytes: a notification."""
    return {
        "to": f"user{i}@example.com",
        "subject": "Welcome to kongtask",
        "template_id": i % 50,
        "vars": {"name": f"User {i}", "plan": ("free", "pro", "team")[i % 3], "trial_days": 14},
        "tags": ["welcome", "onboarding"],
        "sent_by": None,
    }


def large_payload(i: int) -> dict[str, Any]:
    """~1.3 KB: an order with line items."""
    return {
        "order_id": f"ord_{i:08d}",
        "customer": {"id": i, "name": f"Customer {i}", "email": f"c{i}@example.com"},
        "items": [
            {"sku": f"SKU-{i % 97}-{n}", "qty": n + 1, "price": 9.99 + n, "title": f"Item {n}"}
            for n in range(10)
        ],
        "currency": "EUR",
        "notes": "Leave at the door, ring twice. Zoë will sign.",
    }


def payload_mix(i: int) -> dict[str, Any]:
    """60% small, 30% medium, 10% large."""
    slot = i % 10
    if slot < 6:
        return small_payload(i)
    if slot < 9:
        return medium_payload(i)
    return large_payload(i)


def job_row(i: int, payload: dict[str, Any]) -> tuple:
    """One fetched row in JOB_COLUMNS order, as asyncpg hands it over (json as text)."""
    return (
        i,
        None if i % 3 else f"queue_{i % 7}",
        "send_email",
        orjson.dumps(payload).decode(),
        0,
        NOW,
        1,
        25,
        None,
        NOW,
        NOW,
        None if i % 4 else f"key-{i}",
        NOW,
        "worker-1",
        0,
        '{"vip": true}' if i % 5 == 0 else None,
    )


def rows(kind: str, n: int = 500) -> list[Any]:
    """n fetched rows as asyncpg Records, the type decode_jobs gets in production
    (plain tuples if this asyncpg cannot build a Record outside a query)."""
    make = {"small": small_payload, "mixed": payload_mix}[kind]
    plain = [job_row(i, make(i)) for i in range(n)]
    try:
        from asyncpg.protocol.protocol import _create_record
    except ImportError:
        return plain
    from kongtask._core.decode_py import JOB_COLUMNS

    mapping = {name: index for index, name in enumerate(JOB_COLUMNS)}
    return [_create_record(mapping, row) for row in plain]


def leased_rows(n: int = 1000) -> list[Any]:
    """n rows as the lease statement returns them (decode.LEASED_COLUMNS), as Records:
    timestamps as PostgreSQL microseconds, the fetch connections' codec."""
    plain = [
        (
            i,
            1,
            orjson.dumps(small_payload(i)).decode(),
            0,
            849_601_018_820_154 + i,
            1,
            25,
            None,
            849_601_018_820_154,
            849_601_018_820_154,
            0,
            None,
            f"({i // 100},{i % 100 + 1})",
        )
        for i in range(n)
    ]
    try:
        from asyncpg.protocol.protocol import _create_record
    except ImportError:
        return plain
    from kongtask._core.decode_py import LEASED_COLUMNS

    mapping = {name: index for index, name in enumerate(LEASED_COLUMNS)}
    return [_create_record(mapping, row) for row in plain]


def spec_fields(n: int = 10_000) -> list[dict[str, Any]]:
    """Keyword arguments of n job specs (a realistic spread of optional fields)."""
    out = []
    for i in range(n):
        fields: dict[str, Any] = {"identifier": "send_email", "payload": payload_mix(i)}
        if i % 3 == 0:
            fields["queue_name"] = f"mail-{i % 4}"
        if i % 4 == 0:
            fields["run_at"] = NOW + timedelta(minutes=i)
        if i % 2 == 0:
            fields["max_attempts"] = 25
        if i % 10 == 0:
            fields["job_key"] = f"welcome-{i}"
        if i % 5 == 0:
            fields["priority"] = i % 7 - 3
        out.append(fields)
    return out


def cron_expressions(n: int = 1000) -> list[str]:
    """n distinct crontab schedules of the kinds people write."""
    rng = random.Random(1000)
    shapes = [
        lambda: f"*/{rng.choice([1, 2, 5, 10, 15, 20, 30])} * * * *",
        lambda: f"{rng.randrange(60)} * * * *",
        lambda: f"{rng.randrange(60)} {rng.randrange(24)} * * *",
        lambda: f"{rng.randrange(60)} {rng.randrange(8, 18)} * * 1-5",
        lambda: f"{rng.randrange(60)} {rng.randrange(24)} * * {rng.randrange(7)}",
        lambda: f"{rng.randrange(60)} {rng.randrange(24)} {rng.randrange(1, 29)} * *",
        lambda: f"0 {rng.randrange(24)} 1 */{rng.choice([2, 3, 6])} *",
        lambda: f"{rng.randrange(60)} */{rng.choice([2, 3, 4, 6, 8, 12])} * * *",
        lambda: f"0 0 {rng.choice([13, 31])} * {rng.randrange(7)}",
        lambda: f"{rng.randrange(60)} {rng.randrange(24)} 29 2 *",
    ]
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[rng.choice(shapes)()] = None
    return list(seen)


YEAR_EXPRESSIONS = [
    "*/5 * * * *",
    "0 * * * *",
    "30 9-17 * * 1-5",
    "0 4 * * *",
    "15 3 * * 0",
    "0 0 1 * *",
    "0 0 13 * 5",
    "0 12 29 2 *",
    "0 0 31 * *",
    "45 23 1,15 * *",
]
