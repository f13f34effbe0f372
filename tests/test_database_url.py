"""Database URLs as hosts hand them out (Neon's included) become asyncpg-ready targets."""

from __future__ import annotations

import pytest

from backend.database_url import DatabaseTarget, normalise_url

NEON_POOLED = (
    "postgresql://alex:pw@ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)
NEON_DIRECT = NEON_POOLED.replace("-pooler", "")


VERIFIED = "verified: server certificate and host name checked against the system trust store"
UNVERIFIED = "sslmode=require (encrypted; the server certificate is NOT verified)"


@pytest.mark.parametrize(
    ("raw", "dsn", "tls", "statement_cache"),
    [
        (
            NEON_POOLED,
            "postgresql://alex:pw@ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech/neondb",
            VERIFIED,
            False,
        ),
        (
            NEON_DIRECT,
            "postgresql://alex:pw@ep-cool-darkness-123456.eu-central-1.aws.neon.tech/neondb",
            VERIFIED,
            True,
        ),
        (
            "postgres://u:p@localhost:5432/app",
            "postgresql://u:p@localhost:5432/app",
            DatabaseTarget.tls,
            True,
        ),
        ("postgresql+asyncpg://u@h/app", "postgresql://u@h/app", DatabaseTarget.tls, True),
        (
            "postgresql://postgres:@/postgres?host=/tmp/sock",
            "postgresql://postgres:@/postgres?host=%2Ftmp%2Fsock",
            DatabaseTarget.tls,
            True,
        ),
        (
            "postgresql://u@h/app?sslmode=disable",
            "postgresql://u@h/app",
            "sslmode=disable",
            True,
        ),
        (
            "postgresql://u@h/app?sslmode=verify-full",
            "postgresql://u@h/app",
            VERIFIED,
            True,
        ),
        # libpq 16+: the system's CAs, with full verification.
        ("postgresql://u@h/app?sslrootcert=system", "postgresql://u@h/app", VERIFIED, True),
        (
            "postgresql://u@h/app?sslmode=verify-full&sslrootcert=system",
            "postgresql://u@h/app",
            VERIFIED,
            True,
        ),
        ("postgresql://u@h/app?ssl=true", "postgresql://u@h/app", UNVERIFIED, True),
        ("postgresql://u@h/app?ssl=false", "postgresql://u@h/app", "sslmode=disable", True),
    ],
)
def test_normalise_url(raw: str, dsn: str, tls: str, statement_cache: bool) -> None:
    target = normalise_url(raw)
    # asyncpg's DSN: same host and database, libpq-only parameters gone.
    assert target.dsn == dsn
    assert target.tls == tls
    assert target.statement_cache is statement_cache
    assert ("statement_cache_size" in target.connect_args) is not statement_cache


def test_statement_cache_setting_overrides_the_host_guess() -> None:
    assert normalise_url(NEON_POOLED, statement_cache=True).statement_cache is True
    assert normalise_url("postgresql://u@h/app", statement_cache=False).statement_cache is False


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://u@h/db",
        "postgresql://u@h/db?sslmode=sometimes",
        "sqlite:///x.db",
        "postgresql://u@h/db?channel_binding=always",
        "postgresql://u@h/db?sslmode=disable&channel_binding=require",  # binding needs TLS
        "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        "postgresql://u@h/db?sslmode=",  # blank is not "unset": say so rather than guess
        # libpq 16 refuses a weaker mode beside sslrootcert=system, rather than guess.
        "postgresql://u@h/db?sslmode=require&sslrootcert=system",
        "postgresql://u@h/db?sslmode=verify-ca&sslrootcert=system",
        "postgresql://u@h/db?sslmode=prefer&sslrootcert=system",
    ],
)
def test_unsupported_urls_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        normalise_url(raw)
