"""Idempotency-Key on create and toggle (backend/idempotency.py): one write per key, the stored
response for every retry, keys that belong to one user, and nothing kept without its write."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from backend.idempotency import fingerprint
from backend.models import CreateTask
from tests.conftest import ClientFactory, Database, Headers, create_task

TASKS = "/api/alice/tasks"


def _keyed(headers: Headers, key: str) -> dict[str, str]:
    return headers | {"Idempotency-Key": key}


def _same_response(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code
    assert again.content == first.content
    for header in ("Location", "ETag", "Content-Type"):
        assert again.headers.get(header) == first.headers.get(header), header
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_a_retried_create_creates_once_and_gets_the_same_response(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    headers = _keyed(alice, "create-1")
    first = await client.post(TASKS, headers=headers, json={"title": "milk"})
    assert first.status_code == 201
    # The same request, its fields in another order and spacing: still the same request.
    again = await client.post(
        TASKS,
        headers=headers | {"Content-Type": "application/json"},
        content=b'{ "description": null,\n  "title": "milk" }',
    )
    _same_response(first, again)
    assert await db.fetch("SELECT title FROM tasks") == [("milk",)]


async def test_a_retried_toggle_flips_once(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    url = (await create_task(client, alice)).headers["Location"]
    headers = _keyed(alice, "toggle-1")
    first = await client.patch(f"{url}/complete", headers=headers)
    assert first.json()["completed"] is True
    for _ in range(3):
        _same_response(first, await client.patch(f"{url}/complete", headers=headers))
    assert await db.fetch("SELECT completed, version FROM tasks") == [(True, 2)]
    # A new key is a new toggle.
    flipped = await client.patch(f"{url}/complete", headers=_keyed(alice, "toggle-2"))
    assert flipped.json()["completed"] is False


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", TASKS, {"title": "bread"}),  # another body
        ("POST", TASKS, {"title": "milk", "description": "2 l"}),  # one more field
        ("PATCH", f"{TASKS}/{{id}}/complete", None),  # another endpoint
    ],
)
async def test_a_key_reused_for_another_request_is_422_and_writes_nothing(
    client: httpx.AsyncClient,
    db: Database,
    alice: Headers,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    headers = _keyed(alice, "once")
    first = await client.post(TASKS, headers=headers, json={"title": "milk"})
    before = await db.fetch("SELECT id, title, completed, version FROM tasks")

    url = path.format(id=first.json()["id"])
    reused = await client.request(method, url, headers=headers, json=body)
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await db.fetch("SELECT id, title, completed, version FROM tasks") == before


async def test_a_key_reused_for_another_task_is_422(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    one, two = [(await create_task(client, alice, title=t)).headers["Location"] for t in "ab"]
    headers = _keyed(alice, "toggle")
    assert (await client.patch(f"{one}/complete", headers=headers)).status_code == 200
    reused = await client.patch(f"{two}/complete", headers=headers)
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert await db.fetch("SELECT title, completed FROM tasks ORDER BY id") == [
        ("a", True),
        ("b", False),
    ]


async def test_keys_belong_to_their_user(
    client: httpx.AsyncClient, db: Database, alice: Headers, bob: Headers
) -> None:
    """Bob sending alice's key gets his own write and never her stored response."""
    alices = await client.post(TASKS, headers=_keyed(alice, "shared"), json={"title": "alice's"})
    bobs = await client.post("/api/bob/tasks", headers=_keyed(bob, "shared"), json={"title": "b"})
    assert bobs.status_code == 201
    assert "Idempotent-Replayed" not in bobs.headers
    assert bobs.json()["user_id"] == "bob"
    assert bobs.json()["id"] != alices.json()["id"]
    # And his retry replays his own response.
    replay = await client.post("/api/bob/tasks", headers=_keyed(bob, "shared"), json={"title": "b"})
    _same_response(bobs, replay)
    assert sorted(await db.fetch("SELECT user_id, title FROM tasks")) == [
        ("alice", "alice's"),
        ("bob", "b"),
    ]


@pytest.mark.parametrize("endpoint", ["create", "toggle"])
async def test_concurrent_requests_with_one_key_write_once(
    client: httpx.AsyncClient, db: Database, alice: Headers, endpoint: str
) -> None:
    url = (await create_task(client, alice)).headers["Location"]
    headers = _keyed(alice, f"concurrent-{endpoint}")

    def send() -> Any:
        if endpoint == "create":
            return client.post(TASKS, headers=headers, json={"title": "once"})
        return client.patch(f"{url}/complete", headers=headers)

    responses = await asyncio.gather(*(send() for _ in range(8)))
    assert len({(r.status_code, r.content) for r in responses}) == 1
    replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == 7
    if endpoint == "create":
        assert await db.fetch("SELECT count(*) FROM tasks WHERE title = 'once'") == [(1,)]
    else:
        assert await db.fetch("SELECT completed, version FROM tasks") == [(True, 2)]


async def test_a_key_still_in_flight_is_409_then_the_retry_is_served(
    make_client: ClientFactory, db: Database, alice: Headers
) -> None:
    """Another worker is mid-way through the first request: its claim is uncommitted."""
    impatient = await make_client(idempotency_wait_seconds=0.3)  # a short wait for the key
    first = await asyncpg.connect(db.url)
    try:
        transaction = first.transaction()
        await transaction.start()
        await first.execute(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint) VALUES ($1, $2, $3)",
            "alice",
            "in-flight",
            fingerprint("create", CreateTask(title="t")),
        )
        headers = _keyed(alice, "in-flight")
        busy = await impatient.post(TASKS, headers=headers, json={"title": "t"})
        assert busy.status_code == 409
        assert busy.json()["code"] == "idempotency_key_in_flight"
        assert busy.headers["Retry-After"] == "1"
        await transaction.rollback()  # the first request failed: nothing of it stays
    finally:
        await first.close()

    retried = await impatient.post(TASKS, headers=headers, json={"title": "t"})
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert await db.fetch("SELECT title FROM tasks") == [("t",)]


async def test_a_failed_write_keeps_no_key(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    missing = await client.patch(f"{TASKS}/999/complete", headers=_keyed(alice, "k"))
    assert missing.status_code == 404
    assert await db.fetch("SELECT count(*) FROM idempotency_keys") == [(0,)]
    # So the key is free for what the client does next.
    created = await client.post(TASKS, headers=_keyed(alice, "k"), json={"title": "t"})
    assert created.status_code == 201


async def test_requests_without_a_key_and_idempotent_methods_store_nothing(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    url = (await create_task(client, alice)).headers["Location"]
    await client.patch(f"{url}/complete", headers=alice)
    # PUT and DELETE are idempotent by themselves: a key there is accepted and not needed.
    renamed = await client.put(url, headers=_keyed(alice, "p"), json={"title": "u"})
    assert renamed.status_code == 200
    assert (await client.delete(url, headers=_keyed(alice, "d"))).status_code == 204
    assert await db.fetch("SELECT count(*) FROM idempotency_keys") == [(0,)]


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"k" * 256,
        b" leading-space",
        b"tab\there",
        b"\x01",
        "clé".encode(),
        b'"unterminated',
        b'"bad \\escape"',
    ],
)
async def test_a_malformed_key_is_400_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, alice: Headers, key: bytes
) -> None:
    headers = [(name.encode(), value.encode()) for name, value in alice.items()]
    headers.append((b"Idempotency-Key", key))
    response = await client.post(TASKS, headers=headers, json={"title": "t"})
    assert response.status_code == 400, key
    assert response.json() == {
        "code": "invalid_idempotency_key",
        "detail": "Idempotency-Key must be 1 to 255 printable ASCII characters, e.g. a UUID.",
    }
    assert await db.fetch("SELECT count(*) FROM tasks") == [(0,)]


async def test_two_key_headers_are_400(client: httpx.AsyncClient, alice: Headers) -> None:
    headers = [*alice.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    response = await client.post(TASKS, headers=headers, json={"title": "t"})
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_idempotency_key",
        "detail": "Send one Idempotency-Key header, not several.",
    }


async def test_a_quoted_key_is_the_same_key_and_255_characters_fit(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    """The draft defines the field as a structured-field string; most clients send it bare."""
    bare = await client.post(TASKS, headers=_keyed(alice, 'a"b'), json={"title": "t"})
    quoted = await client.post(TASKS, headers=_keyed(alice, r'"a\"b"'), json={"title": "t"})
    _same_response(bare, quoted)
    longest = await client.post(TASKS, headers=_keyed(alice, "k" * 255), json={"title": "t"})
    assert longest.status_code == 201


async def test_keys_are_kept_a_day_then_swept_by_later_writes(
    client: httpx.AsyncClient, db: Database, alice: Headers, bob: Headers
) -> None:
    await client.post(TASKS, headers=_keyed(alice, "old"), json={"title": "t"})
    await client.post(TASKS, headers=_keyed(alice, "day-old"), json={"title": "t"})
    await db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old';"
        "UPDATE idempotency_keys SET created_at = now() - interval '23 hours' WHERE key = 'day-old'"
    )
    kept = await client.post(TASKS, headers=_keyed(alice, "day-old"), json={"title": "t"})
    assert kept.headers.get("Idempotent-Replayed") == "true"  # replays store nothing, sweep nothing

    # Any user's next keyed write sweeps expired keys, whoever's they were.
    await client.post("/api/bob/tasks", headers=_keyed(bob, "new"), json={"title": "t"})
    assert sorted(await db.fetch("SELECT user_id, key FROM idempotency_keys")) == [
        ("alice", "day-old"),
        ("bob", "new"),
    ]


# What an operator's transaction or a deploy holds, and the keyed write it stands in front of.
_LOCKS = {
    "task row": ("SELECT 1 FROM tasks WHERE user_id = 'alice' FOR UPDATE", "toggle"),
    "user row": ("SELECT 1 FROM users WHERE id = 'alice' FOR UPDATE", "create"),
    "table, as CREATE INDEX": ("LOCK TABLE tasks IN SHARE MODE", "create"),
}


@pytest.mark.parametrize("held", list(_LOCKS))
async def test_a_keyed_write_waits_for_a_lock_past_the_key_wait_like_any_write(
    make_client: ClientFactory, db: Database, alice: Headers, held: str
) -> None:
    """The key's wait bound (0.3 s here) is for the claim alone, not for the write after it."""
    client = await make_client(idempotency_wait_seconds=0.3)
    location = (await create_task(client, alice)).headers["Location"]
    lock, write = _LOCKS[held]
    holder = await asyncpg.connect(db.url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(lock)
        if write == "toggle":
            sent = client.patch(f"{location}/complete", headers=_keyed(alice, "k"))
        else:
            sent = client.post(TASKS, headers=_keyed(alice, "k"), json={"title": "new"})
        pending = asyncio.ensure_future(sent)
        await asyncio.sleep(0.8)  # well past the key's 0.3 s
        assert not pending.done()
        await transaction.commit()
        response = await pending
    finally:
        await holder.close()
    assert response.status_code == (200 if write == "toggle" else 201)
    assert await db.fetch("SELECT count(*) FROM idempotency_keys") == [(1,)]


async def test_the_key_judges_the_task_as_routed_not_the_path_as_spelled(
    client: httpx.AsyncClient, db: Database, alice: Headers
) -> None:
    task_id = (await create_task(client, alice)).json()["id"]
    headers = _keyed(alice, "toggle")
    first = await client.patch(f"{TASKS}/{task_id}/complete", headers=headers)
    again = await client.patch(f"{TASKS}/0{task_id}/complete", headers=headers)  # task 5 = 05
    _same_response(first, again)
    assert await db.fetch("SELECT completed, version FROM tasks") == [(True, 2)]
