"""No TLS on loopback unless asked, and TLS after all when the server demands it.

``kongtask.db.plain_on_loopback`` decides; the real-server tests use a private
cluster with TLS on (a throwaway certificate) and read ``pg_stat_ssl`` for
what each connection got.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from kongtask import db
from kongtask.db import connect, create_pool, plain_on_loopback

from . import pgcluster

TLS_VARS = ("PGSSLMODE", "PGSSLNEGOTIATION", "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT")
TLS_VARS += ("PGSERVICE", "PGSERVICEFILE")
SSL_IN_USE = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.fixture(autouse=True)
def _no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TLS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(db, "_WANTS_TLS", set())


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/app",
        "postgres://u:secret@localhost/app",
        "postgresql://u@[::1]:5433/app?application_name=x",
        "postgresql://u@127.0.0.1:5432,localhost:5433/app",
        "postgresql://u@LOCALHOST/app",
    ],
)
def test_loopback_urls_without_a_word_on_tls_go_plain(dsn: str) -> None:
    assert plain_on_loopback(dsn, {})


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u@db.example.com/app",  # leaves the machine
        "postgresql://u@10.0.0.5/app",
        "postgresql://u@127.0.0.1,db.example.com/app",  # one host that is not loopback
        "postgresql://u@127.0.0.1/app?sslmode=prefer",  # asked for explicitly
        "postgresql://u@127.0.0.1/app?sslrootcert=/etc/ca.pem",
        "postgresql://u@127.0.0.1/app?service=main",  # a service file may say sslmode
        "postgresql://u@localhost/app?host=db.example.com",  # the query names the host
        "postgresql:///app",  # a Unix socket: asyncpg never tries TLS there
        "",  # the libpq environment
        "host=127.0.0.1 dbname=app",  # not a URL
    ],
)
def test_anything_else_is_left_to_asyncpg(dsn: str) -> None:
    assert not plain_on_loopback(dsn, {})


def test_a_keyword_or_the_environment_about_tls_is_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = "postgresql://u@127.0.0.1/app"
    assert not plain_on_loopback(dsn, {"ssl": "require"})
    assert not plain_on_loopback(dsn, {"direct_tls": True})
    monkeypatch.setenv("PGSSLMODE", "prefer")
    assert not plain_on_loopback(dsn, {})


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[pgcluster.Cluster]:
    """A private cluster with TLS on, accepting plain and TLS connections on loopback."""
    if pgcluster.available() is not None:
        pytest.skip(str(pgcluster.available()))
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    certs = Path(tempfile.mkdtemp(prefix="kongtask-tls-"))
    key, cert = certs / "server.key", certs / "server.crt"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    files = ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"]
    subprocess.run(["openssl", "req", "-x509", *curve, *files], check=True, capture_output=True)
    key.chmod(0o600)
    certs.chmod(0o755)
    if os.geteuid() == 0:  # the server runs as postgres and must own its key
        owner = pwd.getpwnam("postgres")
        for path in (certs, key, cert):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    cluster = pgcluster.Cluster(
        {"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"}
    )
    try:
        _hba(cluster, "host")
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(certs, ignore_errors=True)


def _hba(cluster: pgcluster.Cluster, kind: str) -> None:
    """pg_hba.conf: loopback TCP as ``host`` (plain or TLS) or ``hostssl`` (TLS only)."""
    path = cluster.data / "pg_hba.conf"
    path.write_text(f"local all all trust\n{kind} all all 127.0.0.1/32 trust\n")


async def _reload(cluster: pgcluster.Cluster) -> None:
    conn = await asyncpg.connect(cluster.dsn, ssl="require")
    try:
        await conn.execute("select pg_reload_conf()")
    finally:
        await conn.close()


async def test_loopback_goes_plain_unless_the_dsn_asks(tls_cluster: pgcluster.Cluster) -> None:
    conn = await connect(tls_cluster.dsn)
    try:
        assert await conn.fetchval(SSL_IN_USE) is False
    finally:
        await conn.close()
    conn = await connect(tls_cluster.dsn + "?sslmode=prefer")
    try:
        assert await conn.fetchval(SSL_IN_USE) is True  # the server offers TLS: taken
    finally:
        await conn.close()


async def test_a_server_that_demands_tls_gets_it(tls_cluster: pgcluster.Cluster) -> None:
    _hba(tls_cluster, "hostssl")
    await _reload(tls_cluster)
    try:
        conn = await connect(tls_cluster.dsn)
        try:
            assert await conn.fetchval(SSL_IN_USE) is True
        finally:
            await conn.close()
        assert tls_cluster.dsn in db._WANTS_TLS  # later connections skip the plain try
        db._WANTS_TLS.clear()
        pool = await create_pool(tls_cluster.dsn, min_size=1, max_size=2)
        try:
            assert await pool.fetchval(SSL_IN_USE) is True
        finally:
            await pool.close()
    finally:
        _hba(tls_cluster, "host")
        await _reload(tls_cluster)
