"""A rolling restart behind a real HAProxy loses no request (the drain of backend/serve.py).

Two instances of `python -m backend serve` behind HAProxy (tests/haproxy.py: checks of /readyz
every 500 ms, fall 2, no retries, no redispatch: a stock balancer), through a real PgBouncer
as in production, under a steady open-loop load; each instance is sent SIGTERM and, once it
has exited, started again, one at a time. No request may fail. The same run with
DRAIN_SECONDS=0 (uvicorn's own shutdown) loses requests: the test can fail.

Tens of seconds (processes start and drain four times), so `make e2e` runs it, not `make test`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, free_port
from tests.haproxy import MISSING, Instance, haproxy_binary, running_haproxy

pytestmark = pytest.mark.usefixtures("clean_tables")

GRACEFUL_SECONDS = 5
DRAIN_SECONDS = 3.0  # above HAProxy's 2 checks 500 ms apart, with a margin for a busy machine
LOAD_PER_SECOND = 200


@pytest.fixture(autouse=True)
def _haproxy_installed() -> None:
    if haproxy_binary() is None:
        if os.environ.get("CI"):  # make e2e installs it wherever it can, as in CI
            pytest.fail(MISSING)
        pytest.skip(MISSING)


@dataclass
class Load:
    """Requests sent at a steady rate (open loop: each on schedule, whatever the others do):
    GET /healthz, an authenticated list and an authenticated create, in turn, by 8 users."""

    url: str
    per_second: float
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # each answered request's latency
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        users = [f"user{n}" for n in range(8)]
        headers = {user: bearer(user) for user in users}
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=self.url, timeout=20, limits=limits) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            requests: set[asyncio.Task[None]] = set()
            for n in itertools.count():
                if self._stop.is_set():
                    break
                user = users[n % len(users)]
                sending = self._one(client, n % 3, user, headers[user], started)
                requests.add(asyncio.create_task(sending))
                self.sent += 1
                await asyncio.sleep(max(0.0, started + (n + 1) / self.per_second - loop.time()))
            await asyncio.gather(*requests)

    async def _one(
        self, client: httpx.AsyncClient, kind: int, user: str, headers: dict[str, str], t0: float
    ) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() - t0
        try:
            if kind == 0:
                response = await client.get("/healthz")
            elif kind == 1:
                response = await client.get(f"/api/{user}/tasks", headers=headers)
            else:
                body = {"title": f"at {at:.2f}s"}
                response = await client.post(f"/api/{user}/tasks", json=body, headers=headers)
        except httpx.HTTPError as exc:
            self.failures.append(f"{at:.2f}s: {type(exc).__name__} {exc}")
            return
        self.seconds.append(loop.time() - t0 - at)
        if not response.is_success:
            self.failures.append(f"{at:.2f}s: {response.status_code} {response.text[:80]}")

    def summary(self) -> str:
        ranked = sorted(self.seconds)
        p99 = ranked[int(len(ranked) * 0.99)] if ranked else float("nan")
        return f"{self.sent} requests, {len(self.failures)} failed, p99 {p99 * 1000:.0f} ms"


@asynccontextmanager
async def steady_load(url: str, per_second: float) -> AsyncIterator[Load]:
    """A Load running until the block ends; every request it sent has ended by then."""
    load = Load(url, per_second)
    sending = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        load._stop.set()
        await sending


@pytest.mark.parametrize(
    ("drain_seconds", "loses_requests"),
    [(DRAIN_SECONDS, False), (0.0, True)],
    ids=["draining", "without-drain"],
)
async def test_a_rolling_restart_behind_haproxy_loses_no_request(
    pgbouncer: str, tmp_path: Path, drain_seconds: float, loses_requests: bool
) -> None:
    environment = {"DRAIN_SECONDS": str(drain_seconds), "DB_STATEMENT_CACHE": "false"}
    instances = [
        Instance(name, pgbouncer, tmp_path, environment, GRACEFUL_SECONDS) for name in ("a", "b")
    ]
    async with AsyncExitStack() as stack:
        for instance in instances:
            stack.push_async_callback(instance.stop)
        await asyncio.gather(*(instance.start() for instance in instances))
        servers = {instance.name: instance.port for instance in instances}
        proxy = stack.enter_context(running_haproxy(tmp_path, free_port(), servers))
        for instance in instances:
            await proxy.until_up(instance.name)

        started = time.monotonic()
        async with steady_load(proxy.url, LOAD_PER_SECOND) as load:
            await asyncio.sleep(1)
            for instance in instances:  # one at a time: the other carries the load meanwhile
                exit_status = await instance.restart(drain_seconds + GRACEFUL_SECONDS + 10)
                # uvicorn's own shutdown re-raises SIGTERM on itself once done; ours exits 0.
                assert exit_status == (-signal.SIGTERM if loses_requests else 0)
                await proxy.until_up(instance.name)
            await asyncio.sleep(1)
    elapsed = time.monotonic() - started
    # The figures README's Deploy section quotes (pytest -rP shows them).
    print(f"rolling restart, DRAIN_SECONDS={drain_seconds:g}: {load.summary()}, {elapsed:.1f} s")
    print("\n".join(load.failures[:3]))

    assert load.sent > LOAD_PER_SECOND * 4
    if loses_requests:
        assert load.failures, "without the drain, requests should have been lost"
    else:
        assert load.failures == []
