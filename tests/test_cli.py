"""`python -m backend token` (what `make token` runs) mints a token the API accepts;
`python -m backend openapi` (what `make contract` runs) writes the document the app serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI

from backend import __main__ as cli
from backend.auth import TokenVerifier
from backend.config import get_settings
from tests.conftest import ROOT, SECRET


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


def test_openapi_command_writes_what_the_app_serves(
    app: FastAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test app has a secret, a database and other settings: the document depends on none.
    cli.main(["openapi", "--output", str(tmp_path / "openapi.json")])
    written = (tmp_path / "openapi.json").read_text()
    assert json.loads(written) == app.openapi()
    cli.main(["openapi"])
    assert capsys.readouterr().out == written


def test_the_committed_contract_is_what_the_code_produces() -> None:
    """make lint's check, here too: a route's status codes, models or descriptions changed
    without `make contract` fail the tests (and mutation testing sees it)."""
    assert cli.openapi_document() == (ROOT / "backend" / "openapi.json").read_text()


def test_the_committed_contract_names_each_operation_after_its_endpoint() -> None:
    document = json.loads((ROOT / "backend" / "openapi.json").read_text())
    operation_ids = {
        f"{method.upper()} {path}": operation["operationId"]
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert operation_ids == {
        "GET /api/{user_id}/tasks": "listTasks",
        "POST /api/{user_id}/tasks": "createTask",
        "GET /api/{user_id}/tasks/{task_id}": "readTask",
        "PUT /api/{user_id}/tasks/{task_id}": "updateTask",
        "DELETE /api/{user_id}/tasks/{task_id}": "deleteTask",
        "PATCH /api/{user_id}/tasks/{task_id}/complete": "toggleTask",
        "GET /healthz": "healthz",
        "GET /readyz": "readyz",
    }
