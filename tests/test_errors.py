"""The one error shape (backend/errors.py): status, code and the headers each status needs."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Headers


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/alice/tasks", "GET, HEAD, POST"),
        ("POST", "/api/alice/tasks/1", "DELETE, GET, HEAD, PUT"),
        ("GET", "/api/alice/tasks/1/complete", "PATCH"),
        ("HEAD", "/api/alice/tasks/1/complete", "PATCH"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_a_405_names_every_method_the_path_serves(
    client: httpx.AsyncClient, alice: Headers, method: str, path: str, allow: str
) -> None:
    """RFC 9110 15.5.6: Allow lists the methods the target resource supports, not one route's."""
    response = await client.request(method, path, headers=alice)
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    if method != "HEAD":
        assert response.json()["code"] == "method_not_allowed"
