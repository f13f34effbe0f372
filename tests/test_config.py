"""Settings fail fast on bad values and derive Better Auth's defaults from BETTER_AUTH_URL."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backend.config import Settings
from tests.conftest import ROOT, SECRET

GOOD_SECRET = SECRET


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_secret_alone_enables_hs256_only() -> None:
    settings = _settings(better_auth_secret=GOOD_SECRET)
    assert settings.jwt_algorithms == ["HS256"]
    assert settings.better_auth_jwks_url is None
    assert settings.jwt_issuer is None
    assert settings.jwt_audience is None


def test_better_auth_url_sets_jwks_issuer_and_audience_like_better_auth() -> None:
    settings = _settings(better_auth_url="https://app.example.com/")
    assert settings.better_auth_jwks_url == "https://app.example.com/api/auth/jwks"
    assert settings.jwt_issuer == settings.jwt_audience == "https://app.example.com"
    assert settings.jwt_algorithms == ["EdDSA", "ES256", "RS256", "PS256"]


def test_better_auth_url_with_its_base_path() -> None:
    settings = _settings(better_auth_url="https://app.example.com/api/auth")
    assert settings.better_auth_jwks_url == "https://app.example.com/api/auth/jwks"
    assert settings.jwt_issuer == "https://app.example.com"


def test_explicit_values_win_over_derived_ones() -> None:
    settings = _settings(
        better_auth_secret=GOOD_SECRET,
        better_auth_url="https://app.example.com",
        better_auth_jwks_url="https://keys.example.com/jwks",
        jwt_issuer="issuer",
        jwt_audience="audience",
        jwt_algorithms="HS256, EdDSA",
    )
    assert settings.better_auth_jwks_url == "https://keys.example.com/jwks"
    assert (settings.jwt_issuer, settings.jwt_audience) == ("issuer", "audience")
    assert settings.jwt_algorithms == ["HS256", "EdDSA"]


def test_lists_come_from_comma_separated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", GOOD_SECRET)
    monkeypatch.setenv("CORS_ORIGINS", "http://localhost:3000, https://app.example.com")
    assert _settings().cors_origins == ["http://localhost:3000", "https://app.example.com"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "no way to verify tokens"),
        ({"better_auth_secret": "short"}, "at least 32 bytes"),
        ({"better_auth_secret": SECRET[:40], "jwt_algorithms": "HS512"}, "HS512 needs"),
        ({"better_auth_secret": GOOD_SECRET, "jwt_algorithms": "none"}, "not a supported"),
        ({"better_auth_secret": GOOD_SECRET, "jwt_algorithms": "EdDSA"}, "no JWKS URL"),
        ({"better_auth_url": "https://a.example.com", "jwt_algorithms": "HS256"}, "is unset"),
        ({"better_auth_url": "ftp://a.example.com"}, r"is not an http\(s\) URL"),
        ({"better_auth_url": "https://a.example.com:99999"}, "has an invalid port"),
        ({"better_auth_secret": GOOD_SECRET, "cors_origins": "*"}, "'\\*' cannot be used"),
        ({"better_auth_secret": GOOD_SECRET, "cors_origins": "127.0.0.1:3000"}, "not an http"),
        ({"better_auth_secret": GOOD_SECRET, "cors_origins": "null"}, "not an http"),
        ({"better_auth_secret": GOOD_SECRET, "cors_origins": "https://*.a.com"}, "wildcards"),
        (
            {"better_auth_secret": GOOD_SECRET, "cors_origins": "https://a.com/app"},
            "is a URL with a path; an origin is https://a.com",
        ),
        ({"better_auth_secret": GOOD_SECRET, "db_pool_size": 0}, "greater than or equal to 1"),
        ({"better_auth_secret": GOOD_SECRET, "log_level": "LOUD"}, "log_level"),
    ],
)
def test_bad_configuration_refuses_to_start(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**values)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "BETTER_AUTH_URL", "CORS_ORIGINS"])
def test_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    # `DATABASE_URL=` as many .env templates leave it: the embedded PostgreSQL, not an error.
    monkeypatch.setenv(variable, "")
    settings = _settings(better_auth_secret=GOOD_SECRET)
    assert getattr(settings, variable.lower()) in (None, [])


@pytest.mark.parametrize(
    ("environment", "line"),
    [
        (
            {"DB_POOL_SIZE": "ten"},
            "configuration error: DB_POOL_SIZE: Input should be a valid integer, unable to parse "
            "string as an integer (got 'ten')",
        ),
        (
            {"DATABASE_URL": "mysql://app:hunter2@db.example.com/app"},
            "configuration error: DATABASE_URL: must be a postgresql:// URL, not mysql://",
        ),
        (
            {"DATABASE_URL": "postgresql://app:hunter2@db.example.com/app?sslmode=sometimes"},
            "configuration error: DATABASE_URL: unsupported sslmode='sometimes'",
        ),
        (
            {"BETTER_AUTH_SECRET": "hunter2"},
            "configuration error: BETTER_AUTH_SECRET: must be at least 32 bytes; generate one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(48))'",
        ),
    ],
    ids=["not a number", "not PostgreSQL", "bad sslmode", "short secret"],
)
def test_a_bad_value_stops_the_server_with_one_line(
    tmp_path: Path, environment: dict[str, str], line: str
) -> None:
    env = {**os.environ, "BETTER_AUTH_SECRET": GOOD_SECRET, "DATABASE_URL": "", **environment}
    command = [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory"]
    command += ["--app-dir", str(ROOT), "--port", "0"]
    result = subprocess.run(  # noqa: S603
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip() == line
    assert "hunter2" not in result.stdout + result.stderr  # credentials never echoed


@pytest.mark.parametrize(
    ("better_auth_url", "origin"),
    [
        ("https://Auth.Example.com", "https://auth.example.com"),
        ("https://auth.example.com:443/", "https://auth.example.com"),
        ("http://Localhost:3000", "http://localhost:3000"),
        ("http://localhost:80", "http://localhost"),
        ("https://user:secret@auth.example.com", "https://auth.example.com"),
        ("HTTPS://auth.example.com:8443/api/auth", "https://auth.example.com:8443"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
    ],
)
def test_issuer_and_audience_are_the_origin_as_better_auth_writes_it(
    better_auth_url: str, origin: str
) -> None:
    """Better Auth signs with `new URL(baseURL).origin` (WHATWG): a raw string compare refused
    every genuine token for `https://Auth.Example.com` or `...:443`."""
    settings = _settings(better_auth_url=better_auth_url)
    assert settings.jwt_issuer == settings.jwt_audience == origin


@pytest.mark.parametrize(
    ("configured", "origins"),
    [
        ("http://127.0.0.1:3000/", ["http://127.0.0.1:3000"]),  # the slash browsers never send
        (
            "HTTPS://App.Example.com:443, http://localhost:3000",
            ["https://app.example.com", "http://localhost:3000"],
        ),
    ],
)
def test_cors_origins_are_written_as_browsers_send_them(
    configured: str, origins: list[str]
) -> None:
    settings = _settings(better_auth_secret=GOOD_SECRET, cors_origins=configured)
    assert settings.cors_origins == origins


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("better-auth-secret-12345678901234567890", "a published default"),
        ("better-auth-secret-that-is-long-enough-for-validation-test", "a published default"),
        ("a" * 32, "almost no entropy"),
        ("ab" * 24, "almost no entropy"),
        ("0123456789abcdef" * 3, "almost no entropy"),
        ("changeme" + GOOD_SECRET, "a placeholder"),
        ("your-secret-key-goes-here-1234567890", "a placeholder"),
    ],
)
def test_guessable_secrets_are_refused(secret: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        _settings(better_auth_secret=secret)


@pytest.mark.parametrize(
    "secret",
    [secrets.token_hex(16), secrets.token_urlsafe(32), "correct horse battery staple todo api"],
    ids=["hex, 128 bits", "base64, 256 bits", "passphrase"],
)
def test_good_secrets_are_accepted(secret: str) -> None:
    assert _settings(better_auth_secret=secret).better_auth_secret is not None
