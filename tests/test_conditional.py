"""ETags and conditional requests (backend/conditional.py): If-Match guards writes (412), and
If-None-Match revalidates a task or a list (304), never across users."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from tests.conftest import Database, Headers, create_task

TASKS = "/api/alice/tasks"


def _write(method: str, url: str) -> dict[str, Any]:
    """The three guarded writes, as (method, url, body) for client.request."""
    if method == "PUT":
        return {"method": "PUT", "url": url, "json": {"title": "renamed"}}
    if method == "PATCH":
        return {"method": "PATCH", "url": f"{url}/complete"}
    return {"method": "DELETE", "url": url}


WRITES = ["PUT", "PATCH", "DELETE"]
# A new task's row (title "t") after each write: (title, completed, version), or none.
ROWS_AFTER = {"PUT": [("renamed", False, 2)], "PATCH": [("t", True, 2)], "DELETE": []}
ROW = "SELECT title, completed, version FROM tasks"


async def test_every_task_response_carries_a_strong_etag_that_changes_with_the_task(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    created = await create_task(client, alice)
    url = created.headers["Location"]
    task_id = created.json()["id"]
    etags = [created.headers["ETag"]]
    assert etags[0] == f'"{task_id}.1"'  # strong: no W/ prefix

    read = await client.get(url, headers=alice)
    assert read.headers["ETag"] == etags[0]  # unchanged task, same tag
    assert read.headers["Cache-Control"] == "private, no-cache"

    for change in (
        client.put(url, headers=alice, json={"title": "renamed"}),
        client.patch(f"{url}/complete", headers=alice),
        client.put(url, headers=alice, json={"completed": False}),
    ):
        response = await change
        assert response.status_code == 200
        etags.append(response.headers["ETag"])
        assert (await client.get(url, headers=alice)).headers["ETag"] == etags[-1]
    assert len(set(etags)) == 4, etags  # every change, a new tag


@pytest.mark.parametrize("method", WRITES)
async def test_if_match_with_the_current_etag_writes(
    client: httpx.AsyncClient, db: Database, alice: Headers, method: str
) -> None:
    created = await create_task(client, alice)
    headers = alice | {"If-Match": created.headers["ETag"]}
    response = await client.request(**_write(method, created.headers["Location"]), headers=headers)
    assert response.status_code == (204 if method == "DELETE" else 200), response.text
    if method != "DELETE":
        assert response.headers["ETag"] == f'"{created.json()["id"]}.2"'
    assert await db.fetch(ROW) == ROWS_AFTER[method]


@pytest.mark.parametrize("method", WRITES)
async def test_if_match_with_a_stale_etag_is_412_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, alice: Headers, method: str
) -> None:
    created = await create_task(client, alice)
    url, stale = created.headers["Location"], created.headers["ETag"]
    edited = await client.put(url, headers=alice, json={"title": "edited elsewhere"})
    assert edited.status_code == 200
    before = await db.fetch("SELECT title, completed, version FROM tasks")

    response = await client.request(**_write(method, url), headers=alice | {"If-Match": stale})
    assert response.status_code == 412
    assert response.json()["code"] == "precondition_failed"
    assert await db.fetch("SELECT title, completed, version FROM tasks") == before


@pytest.mark.parametrize(
    "if_match",
    [
        'W/"{id}.1"',  # a weak tag never matches for a write (strong comparison)
        '"{other}.1"',  # another task's tag
        '"{id}.2"',  # a version this task never had
        '"not-one-of-ours"',
        '"{id}.9223372036854775808"',  # past bigint: never a version, and never a 500
        '"{id}.99999999999999999999"',
    ],
)
async def test_if_match_compares_strongly_and_per_task(
    client: httpx.AsyncClient, db: Database, alice: Headers, if_match: str
) -> None:
    task_id = (await create_task(client, alice)).json()["id"]
    other = (await create_task(client, alice)).json()["id"]
    header = if_match.format(id=task_id, other=other)
    response = await client.put(
        f"{TASKS}/{task_id}", headers=alice | {"If-Match": header}, json={"title": "x"}
    )
    assert (response.status_code, response.json()["code"]) == (412, "precondition_failed"), header
    assert await db.fetch(ROW) == [("t", False, 1)] * 2


async def test_if_match_any_of_a_list_and_star(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    created = await create_task(client, alice)
    url, etag = created.headers["Location"], created.headers["ETag"]
    listed = alice | {"If-Match": f'"0.1", W/{etag}, {etag}'}
    renamed = await client.put(url, headers=listed, json={"title": "a"})
    assert (renamed.status_code, renamed.json()["title"]) == (200, "a")
    star = await client.put(url, headers=alice | {"If-Match": "*"}, json={"title": "b"})
    assert (star.status_code, star.json()["title"]) == (200, "b")
    assert await db.fetch(ROW) == [("b", False, 3)]


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("if_match", ["*", '"{id}.1"'])
async def test_if_match_on_a_task_that_is_not_yours_is_404_like_no_task_at_all(
    client: httpx.AsyncClient,
    db: Database,
    alice: Headers,
    bob: Headers,
    method: str,
    if_match: str,
) -> None:
    """Preconditions are judged only on a task the user can see: a 412 would confirm that bob's
    task exists (and that its ETag was guessed right)."""
    bobs = await create_task(client, bob, title="bob's")
    bobs_id = bobs.json()["id"]
    before = await db.fetch("SELECT title, completed, version FROM tasks")
    for task_id in (bobs_id, bobs_id + 1000):  # bob's, and one that does not exist
        header = if_match.format(id=task_id)
        response = await client.request(
            **_write(method, f"{TASKS}/{task_id}"), headers=alice | {"If-Match": header}
        )
        assert response.status_code == 404, (task_id, response.text)
        assert response.json()["code"] == "task_not_found"
    assert await db.fetch("SELECT title, completed, version FROM tasks") == before


NOT_TAGS = "{} must be * or a list of quoted entity tags, as the ETag header gives them."


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("1.1", NOT_TAGS),
        ('"unterminated', NOT_TAGS),
        ('"a" "b"', NOT_TAGS),
        ('W/ "x"', NOT_TAGS),
        ("", "{} is empty."),
        (" , ,", "{} is empty."),
    ],
)
async def test_malformed_precondition_headers_are_400(
    client: httpx.AsyncClient, db: Database, alice: Headers, header: str, value: str, detail: str
) -> None:
    url = (await create_task(client, alice)).headers["Location"]
    if header == "If-Match":
        response = await client.put(url, headers=alice | {header: value}, json={"title": "x"})
    else:
        response = await client.get(url, headers=alice | {header: value})
    assert response.status_code == 400, value
    assert response.json()["code"] == "invalid_precondition"
    assert response.json()["detail"] == detail.format(header)
    assert await db.fetch("SELECT title FROM tasks") == [("t",)]


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
async def test_a_malformed_precondition_is_400_before_the_task_is_looked_up(
    client: httpx.AsyncClient, alice: Headers, bob: Headers, header: str
) -> None:
    """The header is judged before the database is asked, so the answer is the same 400 for a
    missing task and for another user's: it tells nothing about either."""
    bobs = await create_task(client, bob, title="b")
    for task_id in (bobs.json()["id"], 999_999):
        url = f"{TASKS}/{task_id}"
        if header == "If-Match":
            response = await client.put(url, headers=alice | {header: "1.1"}, json={"title": "x"})
        else:
            response = await client.get(url, headers=alice | {header: "1.1"})
        assert (response.status_code, response.json()["code"]) == (400, "invalid_precondition")


async def test_if_none_match_on_a_task_is_304_until_it_changes(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    created = await create_task(client, alice)
    url, etag = created.headers["Location"], created.headers["ETag"]
    for header in (etag, f"W/{etag}", f'"0.1", {etag}', "*"):
        unchanged = await client.get(url, headers=alice | {"If-None-Match": header})
        assert unchanged.status_code == 304, header
        assert unchanged.content == b""
        assert unchanged.headers["ETag"] == etag
        assert unchanged.headers["Cache-Control"] == "private, no-cache"
    # A header sent as several lines is one list (RFC 9110 section 5.3).
    lines = [*alice.items(), ("If-None-Match", '"0.1"'), ("If-None-Match", etag)]
    assert (await client.get(url, headers=lines)).status_code == 304

    await client.patch(f"{url}/complete", headers=alice)
    changed = await client.get(url, headers=alice | {"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["completed"] is True
    assert changed.headers["ETag"] != etag


async def test_the_list_etag_follows_every_change_of_that_users_tasks_only(
    client: httpx.AsyncClient, alice: Headers, bob: Headers
) -> None:
    first = await create_task(client, alice)
    url = first.headers["Location"]

    async def revalidate(etag: str) -> httpx.Response:
        return await client.get(TASKS, headers=alice | {"If-None-Match": etag})

    listed = await client.get(TASKS, headers=alice)
    etag = listed.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag), etag  # a strong tag: 128 bits of BLAKE2b
    assert listed.headers["Cache-Control"] == "private, no-cache"
    unchanged = await revalidate(etag)
    assert (unchanged.status_code, unchanged.content, unchanged.headers["ETag"]) == (304, b"", etag)

    # Bob's writes are not alice's list: her ETag stays.
    bobs = await create_task(client, bob, title="b")
    await client.patch(f"{bobs.headers['Location']}/complete", headers=bob)
    await client.delete(bobs.headers["Location"], headers=bob)
    assert (await revalidate(etag)).status_code == 304

    seen = {etag}
    for change, status in (
        (client.post(TASKS, headers=alice, json={"title": "second"}), 201),
        (client.put(url, headers=alice, json={"title": "renamed"}), 200),
        (client.patch(f"{url}/complete", headers=alice), 200),
        (client.delete(url, headers=alice), 204),
    ):
        assert (await change).status_code == status
        response = await revalidate(etag)
        assert response.status_code == 200, "a change of alice's tasks kept her list's ETag"
        etag = response.headers["ETag"]
        assert etag not in seen
        seen.add(etag)
        assert (await revalidate(etag)).status_code == 304


async def test_a_page_etag_changes_when_a_next_page_appears(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    await create_task(client, alice)
    page = await client.get(f"{TASKS}?limit=1", headers=alice)
    assert "Link" not in page.headers
    await create_task(client, alice)
    again = await client.get(
        f"{TASKS}?limit=1", headers=alice | {"If-None-Match": page.headers["ETag"]}
    )
    assert again.status_code == 200
    assert again.json() == page.json()  # the same body...
    assert again.headers["ETag"] != page.headers["ETag"]  # ... and a new tag, for its new Link
    assert "Link" in again.headers


async def test_two_tabs_editing_one_task_exactly_one_wins(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    created = await create_task(client, alice)
    url, etag = created.headers["Location"], created.headers["ETag"]
    tabs = [
        client.put(url, headers=alice | {"If-Match": etag}, json={"title": f"tab {n}"})
        for n in range(8)
    ]
    responses = await asyncio.gather(*tabs)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [412] * 7
    (winner,) = [r for r in responses if r.status_code == 200]
    assert await db.fetch("SELECT title, version FROM tasks") == [(winner.json()["title"], 2)]


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("if_none_match", ["*", "{etag}", "W/{etag}", '"0.1", {etag}'])
async def test_if_none_match_naming_the_current_task_refuses_a_write_with_412(
    client: httpx.AsyncClient, db: Database, alice: Headers, method: str, if_none_match: str
) -> None:
    """RFC 9110 13.1.2: for methods other than GET and HEAD, a false If-None-Match is a 412 and
    the method is not performed (`*`: the task exists; a tag: weak comparison)."""
    created = await create_task(client, alice)
    header = if_none_match.format(etag=created.headers["ETag"])
    response = await client.request(
        **_write(method, created.headers["Location"]), headers=alice | {"If-None-Match": header}
    )
    assert response.status_code == 412, header
    assert response.json()["code"] == "precondition_failed"
    assert await db.fetch(ROW) == [("t", False, 1)]


@pytest.mark.parametrize("method", WRITES)
async def test_if_none_match_naming_another_version_lets_the_write_happen(
    client: httpx.AsyncClient, db: Database, alice: Headers, method: str
) -> None:
    created = await create_task(client, alice)
    task_id = created.json()["id"]
    await db.execute("UPDATE tasks SET version = 3")  # as after two edits
    others = f'"{task_id}.2", "{task_id}.7", "{task_id + 1}.3"'  # older, newer, another task's
    response = await client.request(
        **_write(method, created.headers["Location"]), headers=alice | {"If-None-Match": others}
    )
    assert response.status_code == (204 if method == "DELETE" else 200), response.text
    assert await db.fetch(ROW) == [(t, completed, 4) for t, completed, _ in ROWS_AFTER[method]]


@pytest.mark.parametrize("method", WRITES)
async def test_if_none_match_star_on_a_missing_or_foreign_task_is_404(
    client: httpx.AsyncClient, alice: Headers, bob: Headers, method: str
) -> None:
    bobs = (await create_task(client, bob, title="b")).json()["id"]
    for task_id in (bobs, bobs + 1000):
        response = await client.request(
            **_write(method, f"{TASKS}/{task_id}"), headers=alice | {"If-None-Match": "*"}
        )
        assert (response.status_code, response.json()["code"]) == (404, "task_not_found")


@pytest.mark.parametrize("layout", [", {etag}", '"0.1",, {etag}', "{etag}, ,", " ,{etag}"])
async def test_empty_list_elements_are_ignored(
    client: httpx.AsyncClient, alice: Headers, layout: str
) -> None:
    """RFC 9110 5.6.1.2: a recipient accepts and ignores empty list elements."""
    created = await create_task(client, alice)
    url, etag = created.headers["Location"], created.headers["ETag"]
    header = layout.format(etag=etag)
    read = await client.get(url, headers=alice | {"If-None-Match": header})
    assert (read.status_code, read.content, read.headers["ETag"]) == (304, b"", etag), header
    renamed = await client.put(url, headers=alice | {"If-Match": header}, json={"title": "x"})
    assert (renamed.status_code, renamed.json()["title"]) == (200, "x"), header
