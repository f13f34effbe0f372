"""Settings, read once from the environment (and `.env` in development), validated at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class DatabaseSettings(BaseSettings):
    """What the database layer needs (migrations read only these). Names are env var names."""

    # An empty variable (`DATABASE_URL=` in many .env templates) means unset.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Unset: an embedded PostgreSQL is started with its data under `data_dir`.
    database_url: str | None = None
    data_dir: Path = Path(".data")

    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long a request keeps retrying to reach an unreachable database before its 503.
    db_connect_budget_seconds: float = Field(default=5.0, ge=0)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    # None = decide from the URL: off behind a transaction-mode pooler such as Neon's.
    db_statement_cache: bool | None = None

    @field_validator("database_url")
    @classmethod
    def _usable_url(cls, value: str | None) -> str | None:
        if value is not None:
            normalise_url(value)  # raises ValueError naming what is wrong
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
    rate_limit_per_minute: int = Field(default=0, ge=0)  # per user, per worker; 0 = off
    # How long a retry waits for a first request with the same Idempotency-Key to finish
    # before its 409. Below DB_COMMAND_TIMEOUT_SECONDS, so the wait ends in a 409, not a 503.
    idempotency_wait_seconds: float = Field(default=5.0, gt=0, le=60)

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
    def _secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    @field_validator("better_auth_url", "better_auth_jwks_url")
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_origin(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("CORS_ORIGINS must list origins; '*' cannot be used with credentials")
        return value

    @model_validator(mode="after")
    def _wait_ends_before_the_command_timeout(self) -> Settings:
        if self.idempotency_wait_seconds >= self.db_command_timeout_seconds:
            raise ValueError(
                "IDEMPOTENCY_WAIT_SECONDS must be below DB_COMMAND_TIMEOUT_SECONDS "
                f"({self.db_command_timeout_seconds:g})"
            )
        return self

    @model_validator(mode="after")
    def _derive_token_settings(self) -> Settings:
        # Better Auth uses the origin of its base URL as both issuer and audience.
        if self.better_auth_url is not None:
            origin = _origin(self.better_auth_url)
            jwks = self.better_auth_url
            jwks += "/jwks" if jwks.endswith("/api/auth") else "/api/auth/jwks"
            object.__setattr__(self, "jwt_issuer", self.jwt_issuer or origin)
            object.__setattr__(self, "jwt_audience", self.jwt_audience or origin)
            object.__setattr__(self, "better_auth_jwks_url", self.better_auth_jwks_url or jwks)

        if not self.jwt_algorithms:
            defaults: list[str] = []
            if self.better_auth_secret is not None:
                defaults.append("HS256")
            if self.better_auth_jwks_url is not None:
                defaults.extend(BETTER_AUTH_ALGORITHMS)
            object.__setattr__(self, "jwt_algorithms", defaults)

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
_UNSHOWN = frozenset({"BETTER_AUTH_SECRET", "METRICS_TOKEN", "DATABASE_URL"})


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
