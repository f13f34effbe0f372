"""One user's tasks are invisible and untouchable to every other user, by any path or id."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Headers

ALICE_TASK = {"title": "alice's secret", "description": "only alice may see this"}


@pytest.fixture
async def alice_task(client: httpx.AsyncClient, alice: Headers) -> dict[str, object]:
    response = await client.post("/api/alice/tasks", headers=alice, json=ALICE_TASK)
    assert response.status_code == 201
    task: dict[str, object] = response.json()
    return task


def _probes(task_id: object) -> list[tuple[str, str, dict[str, object] | None]]:
    return [
        ("GET", f"/api/{{user}}/tasks/{task_id}", None),
        ("PUT", f"/api/{{user}}/tasks/{task_id}", {"title": "pwned", "completed": True}),
        ("PATCH", f"/api/{{user}}/tasks/{task_id}/complete", None),
        ("DELETE", f"/api/{{user}}/tasks/{task_id}", None),
    ]


async def test_other_users_path_is_403_for_every_endpoint(
    client: httpx.AsyncClient, alice_task: dict[str, object], bob: Headers
) -> None:
    attempts: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", "/api/alice/tasks", None),
        ("POST", "/api/alice/tasks", {"title": "x"}),
    ]
    attempts += [(m, p.format(user="alice"), b) for m, p, b in _probes(alice_task["id"])]
    for method, path, body in attempts:
        response = await client.request(method, path, headers=bob, json=body)
        assert response.status_code == 403, (method, path)
        assert response.json() == {
            "detail": "The path user_id does not match the signed-in user.",
            "code": "forbidden",
        }


async def test_other_users_task_id_under_own_path_is_404(
    client: httpx.AsyncClient, alice_task: dict[str, object], bob: Headers
) -> None:
    task_id = alice_task["id"]
    for method, path, body in _probes(task_id):
        response = await client.request(method, path.format(user="bob"), headers=bob, json=body)
        assert response.status_code == 404, method
        # Exactly what a task that never existed gets: nothing confirms the id is in use.
        assert response.json() == {
            "detail": f"Task {task_id} was not found.",
            "code": "task_not_found",
        }


async def test_missing_and_foreign_ids_are_indistinguishable(
    client: httpx.AsyncClient, alice_task: dict[str, object], bob: Headers
) -> None:
    foreign = await client.get(f"/api/bob/tasks/{alice_task['id']}", headers=bob)
    missing_id = int(str(alice_task["id"])) + 1000
    missing = await client.get(f"/api/bob/tasks/{missing_id}", headers=bob)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["code"] == missing.json()["code"]
    assert set(foreign.headers) == set(missing.headers)


async def test_alices_data_is_unchanged_after_bobs_attempts(
    client: httpx.AsyncClient, alice_task: dict[str, object], alice: Headers, bob: Headers
) -> None:
    for user in ("alice", "bob"):
        for method, path, body in _probes(alice_task["id"]):
            await client.request(method, path.format(user=user), headers=bob, json=body)
    await client.post("/api/alice/tasks", headers=bob, json={"title": "planted"})

    listing = await client.get("/api/alice/tasks", headers=alice)
    assert listing.json() == [alice_task]


async def test_lists_hold_only_the_callers_tasks(
    client: httpx.AsyncClient, alice_task: dict[str, object], alice: Headers, bob: Headers
) -> None:
    bobs = await client.post("/api/bob/tasks", headers=bob, json={"title": "bob's"})
    bob_list = (await client.get("/api/bob/tasks", headers=bob)).json()
    alice_list = (await client.get("/api/alice/tasks", headers=alice)).json()
    assert bob_list == [bobs.json()]
    assert alice_list == [alice_task]
    for completed in ("true", "false"):
        filtered = await client.get(f"/api/bob/tasks?completed={completed}", headers=bob)
        assert all(task["user_id"] == "bob" for task in filtered.json())


async def test_paging_cursor_cannot_reach_other_users(
    client: httpx.AsyncClient, alice_task: dict[str, object], bob: Headers
) -> None:
    response = await client.get("/api/bob/tasks?after_id=0&limit=1000", headers=bob)
    assert response.json() == []
    assert "Link" not in response.headers


@pytest.mark.parametrize(
    "path_user",
    ["alice%2F..%2Fbob", "..", "bob%00", "BOB", "bob ", "%20bob", "bob%2F"],
)
async def test_lookalike_path_users_are_not_the_caller(
    client: httpx.AsyncClient, bob: Headers, path_user: str
) -> None:
    response = await client.get(f"/api/{path_user}/tasks", headers=bob)
    assert response.status_code in {403, 404}
    assert response.status_code != 200
