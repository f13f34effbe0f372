"""A model-based test of the whole API: hypothesis drives random sequences of calls by three
users against a live server, and every response is checked against a plain in-memory model.

`make fuzz` runs it longer (STATEFUL_EXAMPLES). make test runs it once, direct and outside
coverage (the Makefile says why): the statements it reaches are those the other db tests run
through PgBouncer.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from backend.models import DESCRIPTION_CONTROLS, TITLE_CONTROLS
from tests.conftest import VIA_PGBOUNCER, bearer

pytestmark = pytest.mark.skipif(VIA_PGBOUNCER, reason="generated calls, not the database route")

EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "40"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "30"))

# What the API trims: Unicode White_Space (pydantic-core's rule), which is narrower than
# str.strip()'s idea of whitespace (that also strips U+001C..U+001F).
UNICODE_WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


def trimmed(title: str) -> str:
    return title.strip(UNICODE_WHITESPACE)


titles = st.text(min_size=1, max_size=200).filter(
    lambda t: trimmed(t) and not TITLE_CONTROLS.search(trimmed(t))
)
descriptions = st.none() | st.text(max_size=300).filter(
    lambda t: not DESCRIPTION_CONTROLS.search(t)
)
USER_SLOTS = st.sampled_from([0, 1, 2])


class TaskApiMachine(RuleBasedStateMachine):
    """The model: for each user, {task id: task as the API must return it}."""

    base_url: str = ""  # set by the test before the machine runs
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(base_url=self.base_url, timeout=10)
        run = uuid.uuid4().hex[:8]
        self.users = [f"sm{run}u{i}" for i in range(3)]  # unique per run: runs never collide
        self.model: dict[str, dict[int, dict[str, Any]]] = {user: {} for user in self.users}

    def teardown(self) -> None:
        self.http.close()

    def _call(self, method: str, user: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, f"/api/{path}", headers=bearer(user), **kwargs)

    def _owner(self, task_id: int) -> str:
        """Bundled ids are live (delete consumes them), so every one has an owner."""
        return next(u for u, tasks in self.model.items() if task_id in tasks)

    @initialize()
    def start_empty(self) -> None:
        for user in self.users:
            assert self._call("GET", user, f"{user}/tasks").json() == []

    @rule(target=tasks, slot=USER_SLOTS, title=titles, description=descriptions)
    def create(self, slot: int, title: str, description: str | None) -> int:
        user = self.users[slot]
        response = self._call(
            "POST", user, f"{user}/tasks", json={"title": title, "description": description}
        )
        assert response.status_code == 201, response.text
        task = response.json()
        assert (task["user_id"], task["title"], task["description"], task["completed"]) == (
            user,
            trimmed(title),
            description,
            False,
        )
        assert task["id"] not in self._all_ids()
        self.model[user][task["id"]] = task
        return int(task["id"])

    @rule(
        task_id=tasks,
        changes=st.fixed_dictionaries(
            {},
            optional={"title": titles, "description": descriptions, "completed": st.booleans()},
        ).filter(bool),
    )
    def update(self, task_id: int, changes: dict[str, Any]) -> None:
        owner = self._owner(task_id)
        response = self._call("PUT", owner, f"{owner}/tasks/{task_id}", json=changes)
        assert response.status_code == 200, response.text
        expected = {**self.model[owner][task_id], **changes}
        if "title" in changes:
            expected["title"] = trimmed(changes["title"])
        got = response.json()
        assert {k: got[k] for k in ("title", "description", "completed")} == {
            k: expected[k] for k in ("title", "description", "completed")
        }
        self.model[owner][task_id] = got

    @rule(task_id=tasks)
    def toggle(self, task_id: int) -> None:
        owner = self._owner(task_id)
        before = self.model[owner][task_id]["completed"]
        response = self._call("PATCH", owner, f"{owner}/tasks/{task_id}/complete")
        assert response.status_code == 200
        assert response.json()["completed"] is (not before)
        self.model[owner][task_id] = response.json()

    @rule(task_id=consumes(tasks))
    def delete(self, task_id: int) -> None:
        owner = self._owner(task_id)
        assert self._call("DELETE", owner, f"{owner}/tasks/{task_id}").status_code == 204
        del self.model[owner][task_id]
        for method in ("GET", "DELETE", "PATCH"):
            suffix = "/complete" if method == "PATCH" else ""
            gone = self._call(method, owner, f"{owner}/tasks/{task_id}{suffix}")
            assert gone.status_code == 404

    @rule(task_id=tasks, slot=USER_SLOTS)
    def get(self, task_id: int, slot: int) -> None:
        user = self.users[slot]
        response = self._call("GET", user, f"{user}/tasks/{task_id}")
        if task_id in self.model[user]:
            assert response.json() == self.model[user][task_id]
        else:  # someone else's: exactly what a missing id gets
            assert response.status_code == 404
            assert response.json()["code"] == "task_not_found"

    @rule(task_id=tasks, slot=USER_SLOTS, method=st.sampled_from(["GET", "PUT", "PATCH", "DELETE"]))
    def probe_other_users(self, task_id: int, slot: int, method: str) -> None:
        intruder, owner = self.users[slot], self._owner(task_id)
        if owner == intruder:
            return
        suffix = "/complete" if method == "PATCH" else ""
        body = {"json": {"completed": True}} if method == "PUT" else {}
        own_path = self._call(method, intruder, f"{intruder}/tasks/{task_id}{suffix}", **body)
        their_path = self._call(method, intruder, f"{owner}/tasks/{task_id}{suffix}", **body)
        assert own_path.status_code == 404
        assert their_path.status_code == 403

    @rule(slot=USER_SLOTS, completed=st.none() | st.booleans(), limit=st.integers(1, 5))
    def list_pages(self, slot: int, completed: bool | None, limit: int) -> None:
        user = self.users[slot]
        params: dict[str, Any] = {"limit": limit}
        if completed is not None:
            params["completed"] = str(completed).lower()
        seen: list[dict[str, Any]] = []
        response = self._call("GET", user, f"{user}/tasks", params=params)
        while True:
            assert response.status_code == 200
            seen += response.json()
            link = response.headers.get("Link")
            if link is None:
                break
            next_url = link[1 : link.index(">")]
            response = self.http.get(next_url, headers=bearer(user))
        expected = [
            task
            for _, task in sorted(self.model[user].items())
            if completed is None or task["completed"] is completed
        ]
        assert seen == expected

    @invariant()
    def ids_are_never_shared(self) -> None:
        owned = [task_id for tasks in self.model.values() for task_id in tasks]
        assert len(owned) == len(set(owned))

    def _all_ids(self) -> set[int]:
        return {task_id for tasks in self.model.values() for task_id in tasks}


@pytest.mark.usefixtures("clean_tables_sync")
def test_api_behaves_like_the_model(live_server: str) -> None:
    TaskApiMachine.base_url = live_server
    machine = TaskApiMachine.TestCase
    machine.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine().runTest()
