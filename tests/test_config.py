"""Settings fail fast on bad values and derive Better Auth's defaults from BETTER_AUTH_URL."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from backend.config import Settings

GOOD_SECRET = "s" * 64


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
        ({"better_auth_secret": "s" * 40, "jwt_algorithms": "HS512"}, "HS512 needs"),
        ({"better_auth_secret": GOOD_SECRET, "jwt_algorithms": "none"}, "not a supported"),
        ({"better_auth_secret": GOOD_SECRET, "jwt_algorithms": "EdDSA"}, "no JWKS URL"),
        ({"better_auth_url": "https://a.example.com", "jwt_algorithms": "HS256"}, "is unset"),
        ({"better_auth_url": "ftp://a.example.com"}, r"is not an http\(s\) URL"),
        ({"better_auth_secret": GOOD_SECRET, "cors_origins": "*"}, "'*' cannot be used"),
        ({"better_auth_secret": GOOD_SECRET, "db_pool_size": 0}, "greater than or equal to 1"),
        ({"better_auth_secret": GOOD_SECRET, "log_level": "LOUD"}, "log_level"),
    ],
)
def test_bad_configuration_refuses_to_start(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**values)
