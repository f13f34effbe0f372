"""Concurrent writers never lose an update or collide on ids (real connections, real rows)."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import Headers, create_task


async def test_concurrent_toggles_are_all_counted(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    task = (await create_task(client, alice)).json()
    url = f"/api/alice/tasks/{task['id']}/complete"

    responses = await asyncio.gather(*(client.patch(url, headers=alice) for _ in range(51)))

    assert [r.status_code for r in responses] == [200] * 51
    # Each toggle saw the previous one's result: exactly 26 of them ended on True.
    assert sum(r.json()["completed"] for r in responses) == 26
    final = await client.get(f"/api/alice/tasks/{task['id']}", headers=alice)
    assert final.json()["completed"] is True  # 51 flips from False


async def test_fifty_toggles_return_to_the_start(client: httpx.AsyncClient, alice: Headers) -> None:
    task = (await create_task(client, alice)).json()
    url = f"/api/alice/tasks/{task['id']}/complete"
    responses = await asyncio.gather(*(client.patch(url, headers=alice) for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    final = await client.get(f"/api/alice/tasks/{task['id']}", headers=alice)
    assert final.json()["completed"] is False


async def test_concurrent_creates_all_land_with_distinct_ids(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    # The first write of a new user races its own provisioning too.
    responses = await asyncio.gather(
        *(
            client.post("/api/alice/tasks", headers=alice, json={"title": f"t{i}"})
            for i in range(100)
        )
    )
    assert [r.status_code for r in responses] == [201] * 100
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 100

    listing = (await client.get("/api/alice/tasks", headers=alice)).json()
    assert {task["id"] for task in listing} == ids
    assert sorted(task["title"] for task in listing) == sorted(f"t{i}" for i in range(100))
