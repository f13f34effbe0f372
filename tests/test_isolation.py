"""One user's tasks are invisible and untouchable to every other user, by any path or id."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Headers, bearer, create_task

SECRET_TASK = {"title": "a secret", "description": "only its owner may see this"}


@pytest.fixture(
    params=[("alice", "bob"), ("bob", "alice")], ids=["bob probes alice", "alice probes bob"]
)
def owner_and_intruder(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Both orders: an owner filter written as `>=` or `<=` instead of `==` passes one of them
    (user ids compare as strings), so each isolation check runs both ways."""
    pair: tuple[str, str] = request.param
    return pair


@pytest.fixture
def owner(owner_and_intruder: tuple[str, str]) -> str:
    return owner_and_intruder[0]


@pytest.fixture
def intruder(owner_and_intruder: tuple[str, str]) -> str:
    return owner_and_intruder[1]


@pytest.fixture
async def owner_task(client: httpx.AsyncClient, owner: str) -> dict[str, object]:
    task: dict[str, object] = (await create_task(client, bearer(owner), **SECRET_TASK)).json()
    return task


def _probes(task_id: object) -> list[tuple[str, str, dict[str, object] | None]]:
    return [
        ("GET", f"/api/{{user}}/tasks/{task_id}", None),
        ("PUT", f"/api/{{user}}/tasks/{task_id}", {"title": "pwned", "completed": True}),
        ("PATCH", f"/api/{{user}}/tasks/{task_id}/complete", None),
        ("DELETE", f"/api/{{user}}/tasks/{task_id}", None),
    ]


async def test_other_users_path_is_403_for_every_endpoint(
    client: httpx.AsyncClient, owner_task: dict[str, object], owner: str, intruder: str
) -> None:
    attempts: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", f"/api/{owner}/tasks", None),
        ("POST", f"/api/{owner}/tasks", {"title": "x"}),
    ]
    attempts += [(m, p.format(user=owner), b) for m, p, b in _probes(owner_task["id"])]
    for method, path, body in attempts:
        response = await client.request(method, path, headers=bearer(intruder), json=body)
        assert response.status_code == 403, (method, path)
        assert response.json() == {
            "detail": "The path user_id does not match the signed-in user.",
            "code": "forbidden",
        }


async def test_other_users_task_id_under_own_path_is_404(
    client: httpx.AsyncClient, owner_task: dict[str, object], intruder: str
) -> None:
    task_id = owner_task["id"]
    for method, path, body in _probes(task_id):
        response = await client.request(
            method, path.format(user=intruder), headers=bearer(intruder), json=body
        )
        assert response.status_code == 404, method
        # Exactly what a task that never existed gets: nothing confirms the id is in use.
        assert response.json() == {
            "detail": f"Task {task_id} was not found.",
            "code": "task_not_found",
        }


async def test_missing_and_foreign_ids_are_indistinguishable(
    client: httpx.AsyncClient, owner_task: dict[str, object], intruder: str
) -> None:
    headers = bearer(intruder)
    foreign = await client.get(f"/api/{intruder}/tasks/{owner_task['id']}", headers=headers)
    missing_id = int(str(owner_task["id"])) + 1000
    missing = await client.get(f"/api/{intruder}/tasks/{missing_id}", headers=headers)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["code"] == missing.json()["code"]
    assert set(foreign.headers) == set(missing.headers)


async def test_owners_data_is_unchanged_after_the_intruders_attempts(
    client: httpx.AsyncClient, owner_task: dict[str, object], owner: str, intruder: str
) -> None:
    for user in (owner, intruder):
        for method, path, body in _probes(owner_task["id"]):
            await client.request(
                method, path.format(user=user), headers=bearer(intruder), json=body
            )
    await client.post(f"/api/{owner}/tasks", headers=bearer(intruder), json={"title": "planted"})

    listing = await client.get(f"/api/{owner}/tasks", headers=bearer(owner))
    assert listing.json() == [owner_task]


async def _done_task(client: httpx.AsyncClient, user: str) -> dict[str, object]:
    url = (await create_task(client, bearer(user), title="done")).headers["Location"]
    done = await client.patch(f"{url}/complete", headers=bearer(user))
    assert done.status_code == 200
    task: dict[str, object] = done.json()
    return task


async def test_lists_hold_only_the_callers_tasks(
    client: httpx.AsyncClient, owner_task: dict[str, object], owner: str, intruder: str
) -> None:
    # Both have an open and a done task: every filter has one of the owner's to leak.
    owner_done = await _done_task(client, owner)
    theirs = (await create_task(client, bearer(intruder), title="open")).json()
    theirs_done = await _done_task(client, intruder)

    async def listing(user: str, query: str = "") -> object:
        response = await client.get(f"/api/{user}/tasks{query}", headers=bearer(user))
        assert response.status_code == 200
        return response.json()

    assert await listing(intruder) == [theirs, theirs_done]
    assert await listing(owner) == [owner_task, owner_done]
    assert await listing(intruder, "?completed=false") == [theirs]
    assert await listing(intruder, "?completed=true") == [theirs_done]


async def test_paging_cursor_cannot_reach_other_users(
    client: httpx.AsyncClient, owner_task: dict[str, object], intruder: str
) -> None:
    response = await client.get(
        f"/api/{intruder}/tasks?after_id=0&limit=1000", headers=bearer(intruder)
    )
    assert response.json() == []
    assert "Link" not in response.headers


@pytest.mark.parametrize(
    ("path_user", "status", "code"),
    [
        ("alice%2F..%2Fbob", 404, "not_found"),  # decoded, %2F is a slash: no route has three
        ("..", 404, "not_found"),  # clients resolve dot segments: this is GET /tasks
        ("bob%00", 403, "forbidden"),
        ("BOB", 403, "forbidden"),
        ("bob ", 403, "forbidden"),
        ("%20bob", 403, "forbidden"),
        ("bob%2F", 404, "not_found"),
    ],
)
async def test_lookalike_path_users_are_not_the_caller(
    client: httpx.AsyncClient, bob: Headers, path_user: str, status: int, code: str
) -> None:
    response = await client.get(f"/api/{path_user}/tasks", headers=bob)
    assert (response.status_code, response.json()["code"]) == (status, code)
