"""The one error shape (backend/errors.py): status, code and the headers each status needs."""

from __future__ import annotations

import httpx
import pytest

from backend.errors import ApiError
from tests.conftest import ROOT, Headers


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


def _every_error(cls: type[ApiError] = ApiError) -> list[type[ApiError]]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _every_error(child)]


def test_every_error_code_is_in_the_readme_table() -> None:
    """The README's table of statuses is for people; the classes are the truth."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| status | code(s) | when |", 1)[1].split("\n\n", 1)[0]
    missing = [e.code for e in _every_error() if f"`{e.code}`" not in table]
    assert missing == []


def test_every_error_class_has_its_own_code() -> None:
    codes = [error.code for error in _every_error()]
    assert len(codes) == len(set(codes)), sorted(codes)
