"""Bad input gets a clear 4xx JSON error, never a 500, and nothing is written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import DATABASE_DOWN, ClientFactory, Database, Headers, create_task

MAX = 2**63 - 1


@pytest.fixture
async def existing(client: httpx.AsyncClient, alice: Headers) -> dict[str, object]:
    task: dict[str, object] = (await create_task(client, alice, title="keep me")).json()
    return task


async def _task_rows(db: Database) -> list[tuple[object, ...]]:
    return await db.fetch("SELECT * FROM tasks ORDER BY id")


BAD_BODIES = {
    "empty title": {"title": ""},
    "whitespace title": {"title": "   \t\n "},
    "201-char title": {"title": "x" * 201},
    "null title": {"title": None},
    "title not a string": {"title": 42},
    "title a list": {"title": ["a"]},
    "unknown field": {"title": "ok", "owner": "bob"},
    "user_id smuggled": {"title": "ok", "user_id": "bob"},
    "id smuggled": {"title": "ok", "id": 1},
    "description too long": {"title": "ok", "description": "d" * 2001},
    "description not a string": {"title": "ok", "description": 5},
    "NUL in title": {"title": "a\u0000b"},
    "NUL in description": {"title": "ok", "description": "a\u0000b"},
    "missing title": {"description": "no title"},
    "array body": ["title"],
    "string body": "title",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_create_body_is_422_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, alice: Headers, existing: object, body: object
) -> None:
    before = await _task_rows(db)
    response = await client.post("/api/alice/tasks", headers=alice, json=body)

    assert response.status_code == 422
    error = response.json()
    assert error["code"] == "validation_error"
    assert error["detail"].startswith("Invalid request: ")
    assert error["errors"]
    assert all({"loc", "msg", "type"} == set(e) for e in error["errors"])
    assert await _task_rows(db) == before


BAD_UPDATES = {
    "empty body": {},
    "empty title": {"title": ""},
    "null title": {"title": None},
    "null completed": {"completed": None},
    "completed as string": {"completed": "true"},
    "completed as int": {"completed": 1},
    "unknown field": {"done": True},
    "user_id smuggled": {"user_id": "bob"},
    "201-char title": {"title": "x" * 201},
}


@pytest.mark.parametrize("body", BAD_UPDATES.values(), ids=BAD_UPDATES.keys())
async def test_bad_update_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient,
    db: Database,
    alice: Headers,
    existing: dict[str, object],
    body: object,
) -> None:
    before = await _task_rows(db)
    response = await client.put(f"/api/alice/tasks/{existing['id']}", headers=alice, json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert await _task_rows(db) == before


@pytest.mark.parametrize("task_id", ["0", "-1", str(MAX + 1), "abc", "1.5", "1e3", "%20"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_bad_task_id_is_422(
    client: httpx.AsyncClient, alice: Headers, task_id: str, method: str
) -> None:
    path = f"/api/alice/tasks/{task_id}" + ("/complete" if method == "PATCH" else "")
    body = {"title": "x"} if method == "PUT" else None
    response = await client.request(method, path, headers=alice, json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "task_id"]


async def test_largest_id_is_a_plain_404(client: httpx.AsyncClient, alice: Headers) -> None:
    response = await client.get(f"/api/alice/tasks/{MAX}", headers=alice)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=x", "after_id=-1", f"after_id={MAX + 1}", "completed=maybe"],
)
async def test_bad_list_query_is_422(client: httpx.AsyncClient, alice: Headers, query: str) -> None:
    response = await client.get(f"/api/alice/tasks?{query}", headers=alice)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][0] == "query"


async def test_body_over_64_kib_is_413(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    padded = b'{"title": "big", "description": "' + b"d" * (64 * 1024) + b'"}'
    response = await client.post(
        "/api/alice/tasks", headers={**alice, "Content-Type": "application/json"}, content=padded
    )
    assert response.status_code == 413
    assert response.json() == {
        "detail": "The request body is larger than 65536 bytes.",
        "code": "payload_too_large",
    }
    assert await _task_rows(db) == []


async def test_chunked_body_over_64_kib_is_413(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": "big", "description": "'
        for _ in range(70):
            yield b"d" * 1024
        yield b'"}'

    response = await client.post(
        "/api/alice/tasks", headers={**alice, "Content-Type": "application/json"}, content=chunks()
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert await _task_rows(db) == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
async def test_non_json_body_is_415(
    client: httpx.AsyncClient, db: Database, alice: Headers, content_type: str
) -> None:
    headers = {**alice, "Content-Type": content_type}
    response = await client.post("/api/alice/tasks", headers=headers, content=b'{"title": "x"}')
    assert response.status_code == 415
    assert response.json() == {
        "detail": "The request body must be application/json.",
        "code": "unsupported_media_type",
    }
    assert await _task_rows(db) == []


async def test_json_with_charset_and_vendor_types_are_accepted(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post(
            "/api/alice/tasks",
            headers={**alice, "Content-Type": content_type},
            content=b'{"title": "x"}',
        )
        assert response.status_code == 201, content_type


@pytest.mark.parametrize("raw", [b"{", b'{"title": "x",}', b"\xff\xfe", b"nul"])
async def test_malformed_json_is_422(
    client: httpx.AsyncClient, db: Database, alice: Headers, raw: bytes
) -> None:
    response = await client.post(
        "/api/alice/tasks", headers={**alice, "Content-Type": "application/json"}, content=raw
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert await _task_rows(db) == []


async def test_unknown_route_and_method_use_the_error_shape(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    missing = await client.get("/api/alice/nothing", headers=alice)
    wrong_method = await client.post("/api/alice/tasks/1", headers=alice, json={})
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")


@pytest.fixture
async def no_database(make_client: ClientFactory) -> httpx.AsyncClient:
    """The app with its database unreachable."""
    return await make_client(**DATABASE_DOWN)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/alice/tasks", {"title": ""}),
        ("POST", "/api/alice/tasks", {"title": "ok", "owner": "bob"}),
        ("PUT", "/api/alice/tasks/1", {}),
        ("GET", "/api/alice/tasks/0", None),
        ("PATCH", f"/api/alice/tasks/{MAX + 1}/complete", None),
        ("GET", "/api/alice/tasks?limit=0", None),
    ],
    ids=["empty title", "unknown field", "empty update", "task id 0", "id past 2^63", "limit 0"],
)
async def test_bad_input_is_judged_before_the_database_is_asked(
    no_database: httpx.AsyncClient,
    alice: Headers,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    # A 422 needs no connection: it comes even while the database is down, and holds none.
    response = await no_database.request(method, path, headers=alice, json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_a_valid_request_with_the_database_down_is_503(
    no_database: httpx.AsyncClient, alice: Headers
) -> None:
    response = await no_database.post("/api/alice/tasks", headers=alice, json={"title": "ok"})
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
