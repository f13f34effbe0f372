"""Plain ASGI middleware (backend/middleware.py): HEAD answered as GET, CORS in our error shape,
and (backend/errors.py) a 500 a browser can read."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ClientFactory, Headers, create_task

TASKS = "/api/alice/tasks"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", TASKS, f"{TASKS}/{{id}}"])
async def test_head_is_get_without_the_body(
    client: httpx.AsyncClient, alice: Headers, path: str
) -> None:
    """RFC 9110 9.1: a server supports GET and HEAD. Load balancers and uptime checks send HEAD."""
    task_id = (await create_task(client, alice)).json()["id"]
    url = path.format(id=task_id)
    got = await client.get(url, headers=alice)
    head = await client.head(url, headers=alice)
    assert (got.status_code, head.status_code) == (200, 200)
    assert head.content == b""
    for header in ("Content-Type", "Content-Length", "ETag", "Cache-Control"):
        assert head.headers.get(header) == got.headers.get(header), header


async def test_head_keeps_the_get_status_and_conditions(
    client: httpx.AsyncClient, alice: Headers, bob: Headers
) -> None:
    created = await create_task(client, alice)
    url, etag = created.headers["Location"], created.headers["ETag"]
    assert (await client.head(url, headers=alice | {"If-None-Match": etag})).status_code == 304
    missing = await client.head(f"{TASKS}/999999", headers=alice)
    assert (missing.status_code, missing.content) == (404, b"")
    assert (await client.head(url, headers=bob)).status_code == 403
    assert (await client.head(url)).status_code == 401


def test_head_over_a_real_socket_keeps_the_connection_usable(live_server: str) -> None:
    """uvicorn sends HEAD's headers alone; the keep-alive connection then serves the next one."""
    with httpx.Client(base_url=live_server) as http:
        head = http.head("/healthz")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["Content-Length"] == str(len(b'{"status":"ok"}'))
        assert http.get("/healthz").json() == {"status": "ok"}


ORIGIN = {"Origin": "https://app.example.com"}


async def test_a_refused_preflight_is_our_json_error(make_client: ClientFactory) -> None:
    cors = await make_client(cors_origins=["https://app.example.com"])
    refused = await cors.options(
        TASKS,
        headers=ORIGIN
        | {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-evil"},
    )
    assert refused.status_code == 400
    assert refused.json()["code"] == "cors_preflight_refused"
    assert "headers" in refused.json()["detail"]
    assert refused.headers["Content-Type"] == "application/json"


async def test_a_500_carries_the_cors_headers_so_a_browser_can_read_it(
    make_client: ClientFactory, alice: Headers
) -> None:
    """A bug's 500 must reach the page: without CORS headers the browser hides the body (and
    the request id to quote) and reports only "cannot be reached"."""
    cors = await make_client(cors_origins=["https://app.example.com"])
    app = cors._transport.app  # type: ignore[attr-defined]

    async def crash(*_: object) -> None:
        raise RuntimeError("a bug")

    app.state.database.fetch = crash  # the list's one call: an unexpected error, not an outage
    response = await cors.get(TASKS, headers=alice | ORIGIN)
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.json()["request_id"] == response.headers["X-Request-ID"]
