"""Settings, read once from the environment (and `.env` in development), validated at start-up."""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.database_url import normalise_url

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
# What a stock Better Auth JWT plugin can be configured to sign with.
BETTER_AUTH_ALGORITHMS = ("EdDSA", "ES256", "RS256", "PS256")
MIN_SECRET_BYTES = 32

CommaList = Annotated[list[str], NoDecode]
_S = TypeVar("_S", bound=BaseSettings)


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


_DEFAULT_PORTS = {"http": 80, "https": 443}


def web_origin(url: str) -> str:
    """The origin of an http(s) URL as browsers and Better Auth (`new URL(url).origin`) write
    it: scheme and host in lower case, no credentials, no default port; ValueError if `url`
    is not an http(s) URL with a host."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise ValueError(f"{url!r} has an invalid port") from exc
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if "*" in host:
        raise ValueError(f"{url!r}: wildcards are not origins; list each origin")
    host = host.encode("idna").decode("ascii") if not host.isascii() else host
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


# Secrets published with Better Auth itself (its default, its test instance's): anyone can sign.
_PUBLIC_SECRETS = frozenset(
    {
        "better-auth-secret-12345678901234567890",
        "better-auth-secret-that-is-long-enough-for-validation-test",
    }
)
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "replace-me", "replaceme", "your-secret")
MIN_SECRET_BITS = (
    80  # as estimated below; 16 random bytes as hex score 88 and up, 32 as base64 ~190
)


def _estimated_bits(secret: str) -> float:
    """A generous estimate of a secret's entropy: Shannon entropy of its characters, over its
    shortest repeating block (`abcabc` counts as `abc`). Random secrets score far above
    MIN_SECRET_BITS; `a` x 32, `ab` x 16 or a word repeated score below it."""
    period = (secret + secret).find(secret, 1)  # the smallest period, where the string repeats
    block = secret[:period] if len(secret) % period == 0 else secret
    counts = Counter(block)
    return -sum(n * math.log2(n / len(block)) for n in counts.values())


class DatabaseSettings(BaseSettings):
    """What the database layer needs (migrations read only these). Names are env var names."""

    # An empty variable (`DATABASE_URL=` in many .env templates) means unset.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Unset: an embedded PostgreSQL is started with its data under `data_dir`.
    database_url: str | None = None
    # Neon's name for the direct (unpooled) URL: migrations use it when set, the app never does.
    database_url_unpooled: str | None = None
    data_dir: Path = Path(".data")

    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long a request keeps retrying to reach an unreachable database before its 503.
    db_connect_budget_seconds: float = Field(default=5.0, ge=0)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    # None = decide from the URL: off behind a transaction-mode pooler such as Neon's.
    db_statement_cache: bool | None = None

    @field_validator("database_url", "database_url_unpooled")
    @classmethod
    def _usable_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                normalise_url(value)  # raises ValueError naming what is wrong
            except ValueError as exc:  # its message says DATABASE_URL: name the variable given
                variable = str(info.field_name).upper()
                raise ValueError(str(exc).replace("DATABASE_URL", variable, 1)) from None
        return value


class Settings(DatabaseSettings):
    """Every knob the service has. Field names are the environment variable names."""

    better_auth_secret: SecretStr | None = None
    better_auth_url: str | None = None
    better_auth_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: CommaList = Field(default_factory=list)
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_cache_ttl_seconds: float = Field(default=300.0, gt=0)
    jwks_refetch_cooldown_seconds: float = Field(default=1.0, ge=0)
    jwks_fetch_timeout_seconds: float = Field(default=5.0, gt=0)

    cors_origins: CommaList = Field(default_factory=list)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    metrics_enabled: bool = False
    metrics_token: SecretStr | None = None
    # prometheus_client's own variable: where workers share their numbers (unset: chosen by us).
    prometheus_multiproc_dir: Path | None = None
    # OpenTelemetry's own variables: tracing is on when the endpoint is set (the `otel` extra).
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "todo-api"
    rate_limit_per_minute: int = Field(default=0, ge=0)  # per user; 0 = off
    # Where the counts live: memory:// (each process its own), async+redis://... (shared).
    rate_limit_storage_url: str = "memory://"
    # A large response the client does not take within this long (per 64 KiB) is abandoned.
    response_send_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long a retry waits for a first request with the same Idempotency-Key to finish
    # before its 409. Below DB_COMMAND_TIMEOUT_SECONDS, so the wait ends in a 409, not a 503.
    idempotency_wait_seconds: float = Field(default=5.0, gt=0, le=60)
    # After SIGTERM, how long `python -m backend serve` keeps serving with /readyz at 503, so
    # that load balancers stop sending before the listener closes; 0 = stop at once.
    drain_seconds: float = Field(default=10.0, ge=0, le=3600)
    # Admission control (backend/admission.py): unset = 6 x DB_POOL_SIZE in flight; 0 = off.
    admission_max_concurrency: int | None = Field(default=None, ge=0)
    admission_max_queue: int = Field(default=512, ge=0)
    admission_max_wait_seconds: float = Field(default=0.1, gt=0, le=60)
    admission_retry_after_seconds: int = Field(default=1, ge=1, le=3600)

    _split_lists = field_validator("jwt_algorithms", "cors_origins", mode="before")(_split_commas)

    # uvicorn's --log-level is lower case; either case is accepted for both settings.
    _upper_level = field_validator("log_level", mode="before")(
        lambda value: value.upper() if isinstance(value, str) else value
    )
    _lower_format = field_validator("log_format", mode="before")(
        lambda value: value.lower() if isinstance(value, str) else value
    )

    @field_validator("better_auth_secret")
    @classmethod
    def _secret_is_not_guessable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        how = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes; {how}")
        if secret in _PUBLIC_SECRETS or any(word in secret.lower() for word in _PLACEHOLDERS):
            raise ValueError(f"BETTER_AUTH_SECRET is a published default or a placeholder; {how}")
        if _estimated_bits(secret) < MIN_SECRET_BITS:
            raise ValueError(
                f"BETTER_AUTH_SECRET has almost no entropy (a repeated pattern); {how}"
            )
        return value

    @field_validator("better_auth_url", "better_auth_jwks_url")
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        web_origin(value)  # raises ValueError naming what is wrong
        return value.strip().rstrip("/")

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        from backend.ratelimit import storage_uri  # limits and redis: import when used

        storage_uri(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("cors_origins")
    @classmethod
    def _are_origins(cls, values: list[str]) -> list[str]:
        """Each value exactly as a browser sends it in `Origin`, or one line saying why not: a
        value the browser never sends (a path, a wildcard, `null`) would silently never match."""
        origins = []
        for value in values:
            if value == "*":
                raise ValueError("'*' cannot be used with credentials; list the origins")
            origin = web_origin(value)
            if urlsplit(value.strip()).path not in ("", "/"):
                raise ValueError(f"{value!r} is a URL with a path; an origin is {origin}")
            origins.append(origin)
        return origins

    @model_validator(mode="after")
    def _wait_ends_before_the_command_timeout(self) -> Settings:
        if self.idempotency_wait_seconds >= self.db_command_timeout_seconds:
            raise ValueError(
                "IDEMPOTENCY_WAIT_SECONDS must be below DB_COMMAND_TIMEOUT_SECONDS "
                f"({self.db_command_timeout_seconds:g})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _fill_in_from_better_auth(cls, data: Any) -> Any:
        """What the other token settings default to: Better Auth's base URL implies its JWKS URL
        and, as its origin, the issuer and audience it signs; the algorithms follow from which
        of the secret and the JWKS URL there are. Explicit values win."""
        if not isinstance(data, dict):
            return data
        data = {name: value for name, value in data.items() if value not in ("", None)}
        if (url := data.get("better_auth_url")) is not None:
            origin = web_origin(str(url))  # a ValueError here is the URL's own, reported as such
            base = str(url).strip().rstrip("/")
            jwks = base + ("/jwks" if base.endswith("/api/auth") else "/api/auth/jwks")
            data.setdefault("jwt_issuer", origin)
            data.setdefault("jwt_audience", origin)
            data.setdefault("better_auth_jwks_url", jwks)
        if not data.get("jwt_algorithms"):
            algorithms = ["HS256"] if "better_auth_secret" in data else []
            if "better_auth_jwks_url" in data:
                algorithms += BETTER_AUTH_ALGORITHMS
            data["jwt_algorithms"] = algorithms
        return data

    @model_validator(mode="after")
    def _tokens_can_be_verified(self) -> Settings:
        if not self.jwt_algorithms:
            raise ValueError(
                "no way to verify tokens: set BETTER_AUTH_SECRET (HS256) "
                "and/or BETTER_AUTH_URL (Better Auth JWKS)"
            )
        for algorithm in self.jwt_algorithms:
            if algorithm in HMAC_ALGORITHMS and self.better_auth_secret is None:
                raise ValueError(f"JWT_ALGORITHMS has {algorithm} but BETTER_AUTH_SECRET is unset")
            if algorithm in ASYMMETRIC_ALGORITHMS and self.better_auth_jwks_url is None:
                raise ValueError(f"JWT_ALGORITHMS has {algorithm} but no JWKS URL is configured")
            if algorithm not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"JWT_ALGORITHMS: {algorithm!r} is not a supported algorithm")
            if algorithm in HMAC_ALGORITHMS and self.better_auth_secret is not None:
                needed = int(algorithm[2:]) // 8  # RFC 7518 3.2: a key as long as the hash
                if len(self.better_auth_secret.get_secret_value().encode()) < needed:
                    raise ValueError(f"{algorithm} needs a BETTER_AUTH_SECRET of {needed}+ bytes")
        return self


def settings_or_exit(kind: type[_S]) -> _S:
    """`kind` read from the environment and `.env`; a bad value ends the process with one
    line per problem, naming the variable, instead of a traceback."""
    try:
        return kind()
    except ValidationError as exc:
        raise SystemExit("\n".join(_explain(error) for error in exc.errors())) from None


# Values never repeated in an error: they hold credentials.
_UNSHOWN = frozenset(
    {
        "BETTER_AUTH_SECRET",
        "METRICS_TOKEN",
        "DATABASE_URL",
        "DATABASE_URL_UNPOOLED",
        "RATE_LIMIT_STORAGE_URL",
    }
)


def _explain(error: ErrorDetails) -> str:
    if not error["loc"]:  # a rule across several settings
        return f"configuration error: {error['msg'].removeprefix('Value error, ')}"
    variable = str(error["loc"][0]).upper()
    message = error["msg"].removeprefix("Value error, ")
    message = message.removeprefix(f"{variable}:").removeprefix(variable).lstrip(" :")
    shown = "" if variable in _UNSHOWN else f" (got {error['input']!r})"
    return f"configuration error: {variable}: {message}{shown}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; exits with a one-line reason on bad configuration."""
    return settings_or_exit(Settings)
