"""Per-user isolation, safe retries and concurrent edits under load: `locust -f bench/` (web UI)
or headless:

    locust -f bench/ --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

Each simulated user has its own identity and token: HS256 minted with BETTER_AUTH_SECRET, or
`<user_id> <token>` lines from TOKENS_FILE (tokens of a real deployment's users). Every response
is checked against what that user did: lists equal its own tasks exactly, toggles flip, deleted
tasks are gone, and probes of other users' tasks get 404 (own path) or 403 (their path).
Two personas check the guarantees a web client relies on: a Retrier sends creates and toggles
again with the same Idempotency-Key (some sends at once), and each must take effect once; a
TwoTabs user edits one task from two tabs with If-Match, and exactly one edit may win.
A violation is a failure named `ISOLATION: ...`, `EXACTLY-ONCE: ...` or `LOST-UPDATE: ...`; the
run exits non-zero on any violation, any 5xx, or a failure ratio above MAX_FAIL_RATIO (0.01).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import string
import time
import uuid
from typing import Any, ClassVar

import gevent
import jwt
from locust import FastHttpUser, between, events, task
from locust.env import Environment

MAX_FAIL_RATIO = float(os.environ.get("MAX_FAIL_RATIO", "0.01"))
_ALPHANUMERIC = string.ascii_letters + string.digits


class Identity:
    """A Better Auth-style user: a 32-character alphanumeric id and a bearer token."""

    _numbers = itertools.count(1)
    _from_file: list[tuple[str, str]] | None = None

    def __init__(self) -> None:
        self.label = f"u{next(self._numbers)}"
        supplied = self._supplied()
        if supplied:
            self.user_id, self.token = supplied[(int(self.label[1:]) - 1) % len(supplied)]
            return
        secret = os.environ.get("BETTER_AUTH_SECRET")
        if not secret:
            raise RuntimeError("set BETTER_AUTH_SECRET (to mint tokens) or TOKENS_FILE")
        self.user_id = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))
        now = int(time.time())
        claims = {
            "sub": self.user_id,
            "email": f"{self.label}@bench.test",
            "iat": now,
            "exp": now + 24 * 3600,
        }
        for claim, variable in (("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")):
            if os.environ.get(variable):
                claims[claim] = os.environ[variable]
        self.token = jwt.encode(claims, secret, algorithm="HS256")

    @classmethod
    def _supplied(cls) -> list[tuple[str, str]]:
        path = os.environ.get("TOKENS_FILE")
        if path and cls._from_file is None:
            with open(path, encoding="utf-8") as lines:
                cls._from_file = [tuple(line.split(None, 1)) for line in lines if line.strip()]  # type: ignore[misc]
        return [(u, t.strip()) for u, t in cls._from_file or []]


class Owners:
    """Who owns which task, across the simulated users of this process (for probes and names)."""

    owner_of: ClassVar[dict[int, str]] = {}  # task id -> owner's label
    ids_of: ClassVar[dict[str, Identity]] = {}  # label -> identity
    violations = 0


def report_violation(message: str) -> None:
    """A violation, named by its kind: the message starts with ISOLATION, EXACTLY-ONCE..."""
    Owners.violations += 1
    events.request.fire(
        request_type=message.split(":", 1)[0],
        name=message,
        response_time=0,
        response_length=0,
        exception=AssertionError(message),
        context={},
    )


class TaskApiUser(FastHttpUser):
    """What every persona shares: an identity, its tasks as it knows them, checked calls."""

    abstract = True
    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        self.me = Identity()
        Owners.ids_of[self.me.label] = self.me
        self.headers = {"Authorization": f"Bearer {self.me.token}"}
        self.mine: dict[int, dict[str, Any]] = {}
        self.base = f"/api/{self.me.user_id}/tasks"
        listing = self._call("GET", self.base, 200, name="list")
        for item in listing or []:  # a supplied identity may already own tasks
            self._adopt(item)

    # --- checked calls -------------------------------------------------------------------

    def _call(self, method: str, path: str, expected: int, *, name: str, json: Any = None) -> Any:
        with self.client.request(
            method, path, headers=self.headers, json=json, name=name, catch_response=True
        ) as response:
            if response.status_code != expected:
                response.failure(f"{method} {name}: {response.status_code}, expected {expected}")
                return None
            response.success()  # an expected 404 is a pass, not Locust's default failure
            return response.json() if response.content else None

    def _adopt(self, task: dict[str, Any]) -> None:
        if task["user_id"] != self.me.user_id:
            owner = Owners.owner_of.get(task["id"], "another user")
            report_violation(f"ISOLATION: user {self.me.label} saw task {task['id']} of {owner}")
            return
        self.mine[task["id"]] = task
        Owners.owner_of[task["id"]] = self.me.label

    def create(self) -> None:
        title = f"{self.me.label} task {random.randrange(10**6)}"
        created = self._call("POST", self.base, 201, name="create", json={"title": title})
        if created is not None:
            self._adopt(created)

    def check_list(self) -> None:
        listing = self._call("GET", self.base, 200, name="list")
        if listing is None:
            return
        for item in listing:
            if item["user_id"] != self.me.user_id:
                self._adopt(item)  # reports the leak
        seen = {item["id"] for item in listing if item["user_id"] == self.me.user_id}
        if seen != set(self.mine):
            report_violation(
                f"ISOLATION: user {self.me.label} listed {sorted(seen - set(self.mine))[:5]} "
                f"it never made, missing {sorted(set(self.mine) - seen)[:5]}"
            )

    def some_task(self) -> int | None:
        return random.choice(list(self.mine)) if self.mine else None


class Planner(TaskApiUser):
    """Plans the day: creates, lists, reads and renames."""

    weight = 3

    @task(3)
    def plan(self) -> None:
        self.create()

    @task(4)
    def review(self) -> None:
        self.check_list()

    @task(2)
    def read(self) -> None:
        if (task_id := self.some_task()) is not None:
            got = self._call("GET", f"{self.base}/{task_id}", 200, name="read")
            if got is not None and got != self.mine[task_id]:
                report_violation(f"ISOLATION: user {self.me.label} read task {task_id} changed")

    @task(1)
    def rename(self) -> None:
        if (task_id := self.some_task()) is not None:
            body = {"title": f"renamed {random.randrange(10**6)}"}
            updated = self._call("PUT", f"{self.base}/{task_id}", 200, name="update", json=body)
            if updated is not None:
                self._adopt(updated)


class Finisher(TaskApiUser):
    """Gets things done: toggles completion, deletes what is finished."""

    weight = 2

    @task(2)
    def add(self) -> None:
        self.create()

    @task(3)
    def toggle(self) -> None:
        if (task_id := self.some_task()) is None:
            return
        before = self.mine[task_id]["completed"]
        toggled = self._call("PATCH", f"{self.base}/{task_id}/complete", 200, name="toggle")
        if toggled is not None:
            if toggled["completed"] is before:
                report_violation(
                    f"ISOLATION: user {self.me.label} toggle of {task_id} did not flip"
                )
            self._adopt(toggled)

    @task(1)
    def finish(self) -> None:
        if (task_id := self.some_task()) is None:
            return
        self._call("DELETE", f"{self.base}/{task_id}", 204, name="delete")
        self.mine.pop(task_id, None)
        self._call("GET", f"{self.base}/{task_id}", 404, name="read deleted")

    @task(2)
    def review(self) -> None:
        self.check_list()


class Snoop(TaskApiUser):
    """Tries every way into other users' tasks; each attempt must be refused."""

    weight = 1

    @task(1)
    def keep_some(self) -> None:
        if len(self.mine) < 3:
            self.create()

    @task(4)
    def probe(self) -> None:
        foreign = [(i, o) for i, o in list(Owners.owner_of.items()) if o != self.me.label]
        if not foreign:
            return
        task_id, owner_label = random.choice(foreign)
        owner = Owners.ids_of[owner_label]
        method, suffix, body = random.choice(
            [
                ("GET", "", None),
                ("PUT", "", {"title": "pwned"}),
                ("PATCH", "/complete", None),
                ("DELETE", "", None),
            ]
        )
        for path, expected in (
            (f"{self.base}/{task_id}{suffix}", 404),
            (f"/api/{owner.user_id}/tasks/{task_id}{suffix}", 403),
        ):
            with self.client.request(
                method,
                path,
                headers=self.headers,
                json=body,
                catch_response=True,
                name=f"probe {method} {'own path' if expected == 404 else 'their path'}",
            ) as response:
                if response.status_code == expected:
                    response.success()
                elif response.status_code >= 500:
                    response.failure(f"{response.status_code} on a probe")
                else:  # reported once, under the violation's own name
                    response.success()
                    report_violation(
                        f"ISOLATION: user {self.me.label} got {response.status_code} on "
                        f"{method} task {task_id} of {owner_label}"
                    )

    @task(1)
    def review(self) -> None:
        self.check_list()


class Retrier(TaskApiUser):
    """A client on a bad network: every create and toggle goes out with an Idempotency-Key and
    is sent again (sometimes several sends at once). Each must happen exactly once, and every
    send must get the first response back."""

    weight = 1

    def _send_repeatedly(self, method: str, path: str, name: str, body: Any = None) -> Any:
        headers = self.headers | {"Idempotency-Key": str(uuid.uuid4())}
        sends = random.choice([1, 2, 2, 3])
        at_once = sends > 1 and random.random() < 0.5

        def send(_: int) -> tuple[int, bytes, bool]:
            with self.client.request(
                method, path, headers=headers, json=body, name=name, catch_response=True
            ) as response:
                response.success()  # judged below, all sends together
                replayed = response.headers.get("Idempotent-Replayed") == "true"
                return response.status_code, response.content, replayed

        if at_once:
            answers = [
                g.value for g in gevent.joinall([gevent.spawn(send, n) for n in range(sends)])
            ]
        else:
            answers = [send(n) for n in range(sends)]
        statuses = {status for status, _, _ in answers}
        if statuses - {200, 201}:
            if any(status >= 500 for status in statuses):
                return None  # counted as a server error by _count_server_errors
            report_violation(f"EXACTLY-ONCE: {name} sends with one key got {sorted(statuses)}")
            return None
        if len({content for _, content, _ in answers}) != 1 or sum(not r for *_, r in answers) != 1:
            report_violation(
                f"EXACTLY-ONCE: user {self.me.label} {name}: {len(answers)} sends with one key "
                f"did not all get the one first response"
            )
        return json.loads(answers[0][1])

    @task(2)
    def create_with_retries(self) -> None:
        title = f"{self.me.label} retried {random.randrange(10**6)}"
        created = self._send_repeatedly(
            "POST", self.base, "create (keyed, resent)", {"title": title}
        )
        if created is not None:
            self._adopt(created)

    @task(2)
    def toggle_with_retries(self) -> None:
        if (task_id := self.some_task()) is None:
            return
        before = self.mine[task_id]["completed"]
        path = f"{self.base}/{task_id}/complete"
        toggled = self._send_repeatedly("PATCH", path, "toggle (keyed, resent)")
        if toggled is None:
            return
        self._adopt(toggled)
        now = self._call("GET", f"{self.base}/{task_id}", 200, name="read")
        if now is not None and (toggled["completed"] is before or now["completed"] is before):
            report_violation(
                f"EXACTLY-ONCE: user {self.me.label} toggle of {task_id} flipped twice"
            )

    @task(1)
    def review(self) -> None:
        self.check_list()  # a create that happened twice shows up here as a task never made


class TwoTabs(TaskApiUser):
    """One person, two browser tabs, one task: both rename it from the same ETag. Exactly one
    rename may win; the other tab must get 412, and the task must hold the winner's title."""

    weight = 1

    @task(1)
    def keep_some(self) -> None:
        if len(self.mine) < 3:
            self.create()

    @task(3)
    def edit_from_two_tabs(self) -> None:
        if (task_id := self.some_task()) is None:
            return
        url = f"{self.base}/{task_id}"
        with self.client.get(url, headers=self.headers, name="read", catch_response=True) as seen:
            if seen.status_code != 200:
                seen.failure(f"read: {seen.status_code}")
                return
            etag = seen.headers["ETag"]
        guarded = self.headers | {"If-Match": etag}

        def rename(tab: int) -> tuple[int, str]:
            title = f"{self.me.label} tab {tab} {random.randrange(10**6)}"
            with self.client.put(
                url,
                headers=guarded,
                json={"title": title},
                name="update (If-Match, 2 tabs)",
                catch_response=True,
            ) as response:
                response.success()  # judged below, both tabs together
                return response.status_code, title

        tabs = [g.value for g in gevent.joinall([gevent.spawn(rename, tab) for tab in (1, 2)])]
        statuses = sorted(status for status, _ in tabs)
        if any(status >= 500 for status in statuses):
            return
        if statuses != [200, 412]:
            report_violation(f"LOST-UPDATE: two tabs editing task {task_id} got {statuses}")
            return
        winner = next(title for status, title in tabs if status == 200)
        now = self._call("GET", url, 200, name="read")
        if now is not None:
            if now["title"] != winner:
                report_violation(
                    f"LOST-UPDATE: task {task_id} holds {now['title']!r}, not the winner"
                )
            self._adopt(now)

    @task(1)
    def review(self) -> None:
        self.check_list()


@events.quitting.add_listener
def _exit_code(environment: Environment, **_: Any) -> None:
    stats = environment.stats.total
    server_errors = sum(_server_errors.values())
    if Owners.violations:
        print(f"isolation violations: {Owners.violations}")
        environment.process_exit_code = 1
    elif server_errors:
        print(f"5xx responses: {server_errors}")
        environment.process_exit_code = 1
    elif stats.fail_ratio > MAX_FAIL_RATIO:
        print(f"failure ratio {stats.fail_ratio:.3%} > {MAX_FAIL_RATIO:.3%}")
        environment.process_exit_code = 1


_server_errors: dict[tuple[str, int], int] = {}


@events.request.add_listener
def _count_server_errors(response: Any = None, name: str = "", **_: Any) -> None:
    status = getattr(response, "status_code", 0) or 0
    if status >= 500:
        _server_errors[(name, status)] = _server_errors.get((name, status), 0) + 1
