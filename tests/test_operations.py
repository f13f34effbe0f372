"""The operational surface: CORS, structured logs (and test_metrics, test_ratelimit)."""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest

from backend.logs import JsonFormatter, configure_logging
from tests.conftest import DATABASE_DOWN, ClientFactory, bearer


@pytest.fixture
async def cors(make_client: ClientFactory) -> httpx.AsyncClient:
    return await make_client(cors_origins=["https://app.example.com"])


async def test_cors_preflight_for_the_web_client(cors: httpx.AsyncClient) -> None:
    preflight = await cors.options(
        "/api/alice/tasks",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    for method, header in (("PUT", "if-match"), ("GET", "if-none-match")):
        conditional = await cors.options(
            "/api/alice/tasks/1",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": f"authorization, {header}",
            },
        )
        assert conditional.status_code == 200, (header, conditional.text)

    response = await cors.get(
        "/api/alice/tasks", headers={"Origin": "https://app.example.com", **bearer("alice")}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    exposed = {
        name.strip() for name in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    # What a browser script may read: where a task is, the next page, the ids to quote, the
    # ETag for If-Match/If-None-Match, and whether a response was a replay.
    assert exposed >= {
        "Location",
        "Link",
        "X-Request-ID",
        "Retry-After",
        "ETag",
        "Idempotent-Replayed",
    }


async def test_cors_refuses_other_origins(cors: httpx.AsyncClient) -> None:
    preflight = await cors.options(
        "/api/alice/tasks",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_json_logs_carry_the_request_id() -> None:
    record = logging.LogRecord("backend", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    record.request_id = "req-42"
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["msg"] == "boom x"
    assert entry["request_id"] == "req-42"
    assert entry["level"] == "ERROR"


async def test_a_request_logs_json_with_its_id(
    make_client: ClientFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    client = await make_client(log_format="json", **DATABASE_DOWN)
    headers = {"X-Request-ID": "trace-7", **bearer("alice")}
    assert (await client.get("/api/alice/tasks", headers=headers)).status_code == 503
    configure_logging("WARNING", "text")
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    outage = [line for line in lines if line["msg"].startswith("database unreachable")]
    assert outage
    assert outage[0]["request_id"] == "trace-7"
    assert outage[0]["level"] == "WARNING"
