"""`python -m backend token` (what `make token` runs) mints a token the API accepts."""

from __future__ import annotations

import pytest

from backend import __main__ as cli
from backend.auth import TokenVerifier
from backend.config import get_settings
from tests.conftest import SECRET


async def test_dev_token_is_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    monkeypatch.setenv("JWT_ISSUER", "https://app.example.com")
    monkeypatch.delenv("BETTER_AUTH_URL", raising=False)
    get_settings.cache_clear()
    try:
        cli.main(["token", "dev-user", "--email", "dev@example.com"])
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    token = capsys.readouterr().out.strip()

    user = await TokenVerifier.from_settings(settings, client=None).verify(token)
    assert (user.id, user.email) == ("dev-user", "dev@example.com")
