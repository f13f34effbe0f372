"""Plain ASGI middleware (backend/middleware.py): HEAD answered as GET."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Headers

TASKS = "/api/alice/tasks"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", TASKS, f"{TASKS}/{{id}}"])
async def test_head_is_get_without_the_body(
    client: httpx.AsyncClient, alice: Headers, path: str
) -> None:
    """RFC 9110 9.1: a server supports GET and HEAD. Load balancers and uptime checks send HEAD."""
    task_id = (await client.post(TASKS, headers=alice, json={"title": "t"})).json()["id"]
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
    created = await client.post(TASKS, headers=alice, json={"title": "t"})
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
