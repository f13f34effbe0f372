"""The six endpoints' happy paths and their contract details (status, body, headers)."""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import quote

import httpx
import pytest

from backend.db import Row
from backend.models import TaskOut
from backend.responses import dumps
from backend.routes.tasks import MAX_PAGE_BYTES, _first_that_fit
from tests.conftest import Database, Headers, bearer, create_task

UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_create_returns_the_task_and_its_location(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    response = await client.post(
        "/api/alice/tasks", headers=alice, json={"title": "  Buy milk  ", "description": "2 l"}
    )
    assert response.status_code == 201
    task = response.json()
    assert response.headers["Location"] == f"/api/alice/tasks/{task['id']}"
    assert response.headers["Content-Type"] == "application/json"
    assert {k: task[k] for k in ("user_id", "title", "description", "completed")} == {
        "user_id": "alice",
        "title": "Buy milk",
        "description": "2 l",
        "completed": False,
    }
    assert UTC_Z.match(task["created_at"])
    assert task["created_at"] == task["updated_at"]

    fetched = await client.get(response.headers["Location"], headers=alice)
    assert fetched.status_code == 200
    assert fetched.json() == task


async def test_first_write_provisions_the_user_from_the_token(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    await client.get("/api/alice/tasks", headers=alice)  # reads never provision
    before = await db.fetch("SELECT id FROM users")
    await create_task(client, alice, title="first")
    await create_task(client, alice, title="second")
    assert before == []
    assert await db.fetch("SELECT id, email FROM users") == [("alice", "alice@example.com")]


async def test_read_update_toggle_delete(client: httpx.AsyncClient, alice: Headers) -> None:
    task = (await create_task(client, alice, title="write tests", description="first kind")).json()
    url = f"/api/alice/tasks/{task['id']}"

    updated = await client.put(url, headers=alice, json={"title": "write more tests"})
    assert updated.status_code == 200
    assert updated.json()["title"] == "write more tests"
    assert updated.json()["description"] == "first kind"  # omitted = unchanged
    assert updated.json()["updated_at"] > task["updated_at"]

    cleared = await client.put(url, headers=alice, json={"description": None, "completed": True})
    assert (cleared.json()["description"], cleared.json()["completed"]) == (None, True)

    toggled = await client.patch(f"{url}/complete", headers=alice)
    assert toggled.status_code == 200
    assert toggled.json()["completed"] is False
    toggled_back = await client.patch(f"{url}/complete", headers=alice)
    assert toggled_back.json()["completed"] is True

    deleted = await client.delete(url, headers=alice)
    assert deleted.status_code == 204
    assert deleted.content == b""
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        path = f"{url}/complete" if method == "PATCH" else url
        body = {"title": "x"} if method == "PUT" else None
        gone = await client.request(method, path, headers=alice, json=body)
        assert gone.status_code == 404
        assert gone.json() == {
            "detail": f"Task {task['id']} was not found.",
            "code": "task_not_found",
        }


async def test_list_is_ordered_and_filters_by_completion(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    created = [(await create_task(client, alice, title=f"t{i}")).json() for i in range(5)]
    for task in created[1::2]:
        await client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=alice)

    everything = (await client.get("/api/alice/tasks", headers=alice)).json()
    done = (await client.get("/api/alice/tasks?completed=true", headers=alice)).json()
    open_ = (await client.get("/api/alice/tasks?completed=false", headers=alice)).json()

    assert [t["title"] for t in everything] == ["t0", "t1", "t2", "t3", "t4"]
    assert [t["title"] for t in done] == ["t1", "t3"]
    assert [t["title"] for t in open_] == ["t0", "t2", "t4"]


async def _pages(client: httpx.AsyncClient, url: str, headers: Headers) -> list[httpx.Response]:
    """Every page of a list, from `url` on, following `Link: <...>; rel="next"`."""
    pages = []
    next_url: str | None = url
    while next_url is not None:
        page = await client.get(next_url, headers=headers)
        assert page.status_code == 200
        pages.append(page)
        link = re.fullmatch(r'<([^>]+)>; rel="next"', page.headers.get("Link", ""))
        next_url = link[1] if link else None
    return pages


async def test_list_pages_with_limit_after_id_and_link(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    ids = [(await create_task(client, alice, title=f"t{i}")).json()["id"] for i in range(5)]

    pages = await _pages(client, "/api/alice/tasks?limit=2", alice)
    assert [task["id"] for page in pages for task in page.json()] == ids
    assert len(pages) == 3

    exact = await client.get("/api/alice/tasks?limit=5", headers=alice)
    assert len(exact.json()) == 5
    assert "Link" not in exact.headers  # nothing remains, so no next page


async def test_link_keeps_the_filter(client: httpx.AsyncClient, alice: Headers) -> None:
    for i in range(3):
        await create_task(client, alice, title=f"t{i}")
    response = await client.get("/api/alice/tasks?completed=false&limit=1", headers=alice)
    assert "completed=false" in response.headers["Link"]
    assert "limit=1" in response.headers["Link"]


async def test_timestamps_are_utc_z_everywhere(client: httpx.AsyncClient, alice: Headers) -> None:
    task = (await create_task(client, alice, title="t")).json()
    url = f"/api/alice/tasks/{task['id']}"
    bodies = [
        task,
        (await client.get(url, headers=alice)).json(),
        (await client.put(url, headers=alice, json={"title": "u"})).json(),
        (await client.patch(f"{url}/complete", headers=alice)).json(),
        (await client.get("/api/alice/tasks", headers=alice)).json()[0],
    ]
    for body in bodies:
        for field in ("created_at", "updated_at"):
            assert UTC_Z.match(body[field]), body[field]
            assert datetime.fromisoformat(body[field]).utcoffset() is not None


# Rows as SQL can hold them (validation refuses controls in titles): what JSON must escape or
# keep as is, and timestamps with and without a fraction of a second.
_TRICKY_TEXTS = [
    ('quotes " and \\ back\\slash', None),
    ("unicode é ü 漢字 😀 \u2028 \u2029", "tab\tnew\nline\rcr"),
    ("C0 \x01 \x08 \x0c \x1f DEL \x7f", "\x0b\x0e"),
    ("C1 \x80 \x85 \x9f", "</script> & <b>"),
]


@pytest.mark.parametrize("user_id", ["alice", 'q"u\\o\u00e9te'])
async def test_a_page_is_byte_for_byte_each_task_as_the_encoder_writes_it(
    client: httpx.AsyncClient, db: Database, user_id: str
) -> None:
    headers = bearer(user_id)
    await create_task(client, headers, title="made by the API")
    for title, description in _TRICKY_TEXTS:
        await db.fetch(
            "INSERT INTO tasks (user_id, title, description, completed) VALUES ($1, $2, $3, $4)",
            user_id,
            title,
            description,
            description is None,
        )
    # Timestamps on a whole second (the encoder writes no fraction then) and a microsecond past.
    await db.execute(
        "UPDATE tasks SET created_at = date_trunc('second', created_at),"
        " updated_at = date_trunc('second', updated_at) + interval '1 microsecond'"
        " WHERE title LIKE 'C%'"
    )
    columns = ", ".join(TaskOut.model_fields)  # the response's fields, in its order
    rows = await db.fetch(f"SELECT {columns} FROM tasks ORDER BY id")  # noqa: S608
    tasks = [dict(zip(TaskOut.model_fields, row, strict=True)) for row in rows]
    url = f"/api/{quote(user_id, safe='')}/tasks"

    listing = await client.get(url, headers=headers)
    assert listing.status_code == 200
    assert listing.content == dumps(tasks)
    pages = await _pages(client, f"{url}?limit=2", headers)
    assert [page.content for page in pages] == [dumps(tasks[i : i + 2]) for i in (0, 2, 4)]


async def test_openapi_documents_every_endpoint(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operations = {
        (method.upper(), path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if path.startswith("/api/")
    }
    assert set(operations) == {
        ("GET", "/api/{user_id}/tasks"),
        ("POST", "/api/{user_id}/tasks"),
        ("GET", "/api/{user_id}/tasks/{task_id}"),
        ("PUT", "/api/{user_id}/tasks/{task_id}"),
        ("DELETE", "/api/{user_id}/tasks/{task_id}"),
        ("PATCH", "/api/{user_id}/tasks/{task_id}/complete"),
    }
    assert spec["components"]["securitySchemes"]["BetterAuthJWT"]["scheme"] == "bearer"
    for op in operations.values():
        assert op["tags"] == ["tasks"]
        assert op["summary"]
        assert op["security"] == [{"BetterAuthJWT": []}]
        assert {"401", "403", "422", "503"} <= set(op["responses"])
    assert "404" in operations[("GET", "/api/{user_id}/tasks/{task_id}")]["responses"]
    assert "413" in operations[("POST", "/api/{user_id}/tasks")]["responses"]


async def test_the_first_page_starts_at_the_very_first_id(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    # Ids come from an identity that never restarts, so tests rarely see id 1; the list must
    # begin at it all the same (the default `after_id` is 0, not 1).
    await db.execute(
        "INSERT INTO users (id) VALUES ('alice');"
        "INSERT INTO tasks (id, user_id, title) OVERRIDING SYSTEM VALUE "
        "VALUES (1, 'alice', 'first')"
    )
    listing = await client.get("/api/alice/tasks", headers=alice)
    assert [task["id"] for task in listing.json()] == [1]


@pytest.mark.parametrize("user_id", ["a?b", "a#b", "john doe", "100%25", "üö"])
async def test_location_and_link_encode_the_user_id(
    client: httpx.AsyncClient, user_id: str
) -> None:
    """`sub` may be any string: every URL the API writes is one a client can follow as is."""
    headers = bearer(user_id)
    tasks = f"/api/{quote(user_id, safe='')}/tasks"
    created = [await client.post(tasks, headers=headers, json={"title": f"t{i}"}) for i in range(2)]
    location = created[0].headers["Location"]
    assert location == f"{tasks}/{created[0].json()['id']}"
    assert " " not in location
    followed = await client.get(location, headers=headers)
    assert (followed.status_code, followed.json()["user_id"]) == (200, user_id)

    first = await client.get(f"{tasks}?limit=1", headers=headers)
    next_page = re.fullmatch(r'<([^>]+)>; rel="next"', first.headers["Link"])
    assert next_page is not None
    second = await client.get(next_page[1], headers=headers)
    assert second.status_code == 200
    assert [task["id"] for task in second.json()] == [created[1].json()["id"]]


async def test_a_page_stops_at_its_byte_budget_and_link_yields_every_task_once(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    """1,000 long tasks would be a 13 MB page; a page ends before 512 KiB of JSON instead, and
    following Link still yields every task exactly once. Rows written before control
    characters were refused (by SQL here) count at their escaped size."""
    await create_task(client, alice, title="first")  # the user row
    await db.execute(
        "INSERT INTO tasks (user_id, title, description) SELECT 'alice', 't' || g,"
        " CASE WHEN g % 2 = 0 THEN repeat(chr(1), 2000) ELSE repeat('\\', 2000) END"
        " FROM generate_series(1, 400) g"
    )
    expected = [row[0] for row in await db.fetch("SELECT id FROM tasks ORDER BY id")]
    pages = await _pages(client, "/api/alice/tasks", alice)
    assert all(len(page.content) <= MAX_PAGE_BYTES for page in pages)
    assert [task["id"] for page in pages for task in page.json()] == expected
    # About 8 KB a task (escapes: \\ is 2 bytes, U+0001 is 6): pages of ~60 tasks, not 1,000.
    assert 6 <= len(pages) <= 8


async def test_pages_of_plain_text_are_nearly_full_and_link_yields_every_task_once(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    """Without escapes a task's JSON is smaller than the budget's estimate of it: the page
    still ends at the first task that starts past the estimate (and says so with Link), and
    holds nearly 512 KiB, not a fraction of it."""
    await create_task(client, alice, title="first")
    await db.execute(
        "INSERT INTO tasks (user_id, title, description)"
        " SELECT 'alice', 't' || g, repeat('a', 2000) FROM generate_series(1, 400) g"
    )
    expected = [row[0] for row in await db.fetch("SELECT id FROM tasks ORDER BY id")]
    pages = await _pages(client, "/api/alice/tasks", alice)
    assert [task["id"] for page in pages for task in page.json()] == expected
    assert len(pages) == 2
    assert 0.9 * MAX_PAGE_BYTES < len(pages[0].content) <= MAX_PAGE_BYTES


def _rows(*sizes: int) -> list[Row]:
    return [{"id": n, "task_json": b"x" * size} for n, size in enumerate(sizes)]


@pytest.mark.parametrize(
    ("sizes", "budget", "kept"),
    [
        ((11, 11, 11), 2 + 11 + 1 + 11, 2),  # [a,b]: exactly the budget
        ((11, 11, 11), 2 + 11 + 1 + 11 - 1, 1),  # a byte short of two
        ((11, 10, 11), 2 + 11 + 10 + 11 + 2, 3),
        ((11, 10, 11), 2 + 11 + 10 + 11 + 2 - 1, 2),
        ((50, 10), 20, 1),  # one task at least, even past the budget
    ],
)
def test_the_first_tasks_that_fit_are_counted_to_the_byte(
    sizes: tuple[int, ...], budget: int, kept: int
) -> None:
    page = _first_that_fit(_rows(*sizes), budget)
    assert len(page) == kept
    assert len(b"[" + b",".join(row["task_json"] for row in page) + b"]") <= budget or kept == 1
