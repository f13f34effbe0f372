"""What a `DATABASE_URL` asks for, in asyncpg's terms: the DSN, the TLS it must get, and
whether prepared statements may be cached.

A leaf: settings validate URLs with it and the database layer connects with it; it imports
neither. Everything libpq-style URLs say (Neon's console URLs verbatim) is either honoured or
refused with a sentence; nothing the URL asks for is weakened.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# libpq `sslmode` values and what asyncpg's `ssl` argument calls them.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_CHANNEL_BINDING = frozenset({"disable", "prefer", "require"})
# libpq parameters asyncpg does not take and that ask for nothing we would weaken by dropping.
_DROPPED_PARAMS = frozenset({"gssencmode", "target_session_attrs"})


@dataclass(frozen=True)
class DatabaseTarget:
    """The DSN for asyncpg (`dsn`) and what must go to asyncpg.connect() besides
    (`connect_args`): the app's pool and Alembic's engine connect with both. `tls` says in
    words what the connection's TLS protects against, for the start-up log."""

    dsn: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    statement_cache: bool = True
    tls: str = "as the server and libpq defaults decide (sslmode unset)"


def is_pooler_host(host: str) -> bool:
    """Neon's pooled endpoints (PgBouncer, transaction mode) carry `-pooler` in the host name."""
    return "-pooler." in host or host.endswith("-pooler")


def normalise_url(raw: str, statement_cache: bool | None = None) -> DatabaseTarget:
    """Turn a libpq-style URL (as Neon and most hosts give it) into an asyncpg one.

    `statement_cache=None` decides from the host: off behind a transaction-mode pooler, where a
    prepared statement may land on another server connection.
    """
    parts = urlsplit(raw.strip())
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")

    query: list[tuple[str, str]] = []
    tls: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in {"sslmode", "ssl"}:
            if value not in _SSL_MODES | {"true", "false"}:
                raise ValueError(f"DATABASE_URL: unsupported {name}={value!r}")
            tls["sslmode"] = {"true": "require", "false": "disable"}.get(value, value)
        elif name == "channel_binding":
            if value not in _CHANNEL_BINDING:
                raise ValueError(f"DATABASE_URL: unsupported channel_binding={value!r}")
            tls[name] = value
        elif name == "sslrootcert":
            tls[name] = value
        elif name not in _DROPPED_PARAMS:
            query.append((name, value))
    connect_args, tls_summary = _tls(**tls)

    if statement_cache is None:
        statement_cache = not is_pooler_host(parts.hostname or "")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    if not statement_cache:
        connect_args["statement_cache_size"] = 0
    return DatabaseTarget(dsn, connect_args, statement_cache, tls_summary)


def _tls(
    sslmode: str | None = None, channel_binding: str = "prefer", sslrootcert: str | None = None
) -> tuple[dict[str, Any], str]:
    """asyncpg's `ssl` argument for the URL's TLS parameters, and what it protects against.

    asyncpg has no SCRAM channel binding, the protection `channel_binding=require` asks for
    against a man in the middle. Dropping it would leave `sslmode=require`, which checks no
    certificate. So such a URL gets what gives that protection instead: the server certificate
    verified, host name included, against `sslrootcert` or the system trust store (where Neon's
    publicly issued certificates chain to). `verify-ca`/`verify-full` are verified the same way
    (asyncpg alone would demand ~/.postgresql/root.crt). Nothing the URL asks for is weakened.
    """
    if sslrootcert == "system":  # libpq 16+: full verification against the system's CAs
        if sslmode not in (None, "verify-full"):
            raise ValueError(
                f"DATABASE_URL: sslrootcert=system needs sslmode=verify-full, not {sslmode}"
            )
        sslmode = "verify-full"
    if channel_binding == "require" and sslmode in {"disable", "allow", "prefer"}:
        raise ValueError(f"DATABASE_URL: channel_binding=require needs TLS, not sslmode={sslmode}")
    check_host = sslmode == "verify-full" or (
        channel_binding == "require" and sslmode != "verify-ca"
    )
    # libpq verifies under sslmode=require too when it is given a root certificate.
    verify = check_host or sslmode == "verify-ca" or (sslmode == "require" and sslrootcert)
    if not verify:
        if sslmode is None:
            return {}, DatabaseTarget.tls
        unverified = " (encrypted; the server certificate is NOT verified)"
        return {"ssl": sslmode}, f"sslmode={sslmode}" + (unverified if sslmode == "require" else "")
    # libpq's rule: sslrootcert=system, or none given, means the system's trust store.
    cafile = sslrootcert if sslrootcert not in (None, "system") else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except OSError as exc:
        raise ValueError(f"DATABASE_URL: sslrootcert={cafile} cannot be read ({exc})") from exc
    context.check_hostname = check_host
    trust = cafile or "the system trust store"
    checked = "certificate and host name" if check_host else "certificate"
    return {"ssl": context}, f"verified: server {checked} checked against {trust}"
