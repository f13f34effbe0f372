"""The per-user rate limit (backend/ratelimit.py): limits' sliding window counter in this process
(memory://, on an injected clock) and in a real redis-server shared by two app instances; a
Redis that is gone or stalled costs a bounded delay, and requests are served, logged, counted."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import limits.aio.storage.memory
import limits.aio.strategies
import pytest

from backend import ratelimit
from backend.config import Settings, settings_or_exit
from backend.main import create_app
from backend.ratelimit import RateLimiter
from tests.conftest import SECRET, ClientFactory, bearer, free_port, serve

MINUTE_START = 60.0 * 29_000_000  # a wall-clock time on a minute boundary, as limits' windows are


class FakeTime:
    """Stands in for the `time` module where limits and backend.ratelimit read the clock
    (limits takes no clock argument)."""

    def __init__(self) -> None:
        self.now = MINUTE_START

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    for module in (limits.aio.storage.memory, limits.aio.strategies, ratelimit):
        monkeypatch.setattr(module, "time", fake)
    return fake


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, without persistence; stopped after."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        reason = (
            "redis-server is not installed (brew install redis, or apt-get install redis-server)"
        )
        if os.environ.get("CI"):  # make test installs it wherever it can, as in CI
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    process = subprocess.Popen(  # noqa: S603 (the Debian binary, fixed arguments)
        [*command, "--save", "", "--appendonly", "no", "--logfile", str(tmp_path / "redis.log")]
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None, (tmp_path / "redis.log").read_text()
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    try:
        yield RedisServer(f"async+redis://127.0.0.1:{port}", process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a test may have left it stopped
            process.terminate()
            process.wait(timeout=10)


async def test_a_burst_then_a_steady_refill(clock: FakeTime) -> None:
    limiter = RateLimiter(per_minute=6)
    clock.now += 30  # half way through a minute window
    assert [await limiter.retry_after("alice") for _ in range(6)] == [None] * 6
    assert await limiter.retry_after("alice") == 30  # refused until the window ends
    assert await limiter.retry_after("bob") is None  # every user has their own count
    clock.now += 29
    assert await limiter.retry_after("alice") == 1

    allowed_at, waits = [], []
    for second in range(60, 120):  # the next window: one request every 60/6 s, as a bucket refills
        clock.now = MINUTE_START + second + 0.5  # off the whole seconds where floats tie
        if (wait := await limiter.retry_after("alice")) is None:
            allowed_at.append(second)
        else:
            waits.append(wait)
    assert allowed_at == [60, 70, 80, 90, 100, 110]
    assert max(waits) <= 10
    await limiter.aclose()


async def test_the_memory_sweep_runs_at_most_once_a_second(clock: FakeTime) -> None:
    # limits sweeps every key after each hit; with 10,000 users that was ~0.45 ms a request.
    limiter = RateLimiter(per_minute=1000)
    storage = limiter._memory
    assert storage is not None
    sweeps = set()
    for user in range(50):
        await limiter.retry_after(f"user{user}")
        assert storage.timer is not None
        sweeps.add(storage.timer)
        await storage.timer  # done: limits alone would start another at the next hit
    assert len(sweeps) == 1
    clock.now += 120  # every count has expired: the next hit starts a sweep that drops them
    await limiter.retry_after("alice")
    assert storage.timer is not None
    assert storage.timer not in sweeps
    await storage.timer
    assert storage.storage
    assert all("alice" in key for key in storage.storage)
    await limiter.aclose()


@pytest.fixture
def limited_settings(settings: Settings, clean_tables_sync: None) -> Settings:
    return settings.model_copy(update={"rate_limit_per_minute": 5})


async def test_429_with_retry_after_per_user_after_auth(make_client: ClientFactory) -> None:
    client = await make_client(rate_limit_per_minute=5)
    statuses = [
        (await client.get("/api/alice/tasks", headers=bearer("alice"))).status_code
        for _ in range(6)
    ]
    assert statuses == [200] * 5 + [429]
    refused = await client.get("/api/alice/tasks", headers=bearer("alice"))
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert (await client.get("/api/bob/tasks", headers=bearer("bob"))).status_code == 200
    assert (await client.get("/api/alice/tasks")).status_code == 401  # auth comes first


def test_two_instances_share_one_limit_in_redis(
    limited_settings: Settings, redis_server: RedisServer
) -> None:
    shared = {"rate_limit_per_minute": 30, "rate_limit_storage_url": redis_server.url}
    app_settings = limited_settings.model_copy(update=shared)
    headers = bearer("alice")
    with (
        serve(create_app(app_settings)) as first,
        serve(create_app(app_settings)) as second,
        httpx.Client(timeout=10) as client,
    ):
        responses = [
            client.get(f"{(first, second)[n % 2]}/api/alice/tasks", headers=headers)
            for n in range(60)
        ]
    assert [r.status_code for r in responses] == [200] * 30 + [429] * 30
    for refused in responses[30:]:
        assert refused.json()["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_a_redis_outage_is_served_logged_and_counted(
    limited_settings: Settings, redis_server: RedisServer, capfd: pytest.CaptureFixture[str]
) -> None:
    update = {
        "rate_limit_per_minute": 3,
        "rate_limit_storage_url": redis_server.url,
        "metrics_enabled": True,
    }
    headers = bearer("alice")
    with (
        serve(create_app(limited_settings.model_copy(update=update))) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        statuses = [client.get("/api/alice/tasks", headers=headers).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        redis_server.process.kill()
        redis_server.process.wait(timeout=10)
        started = time.monotonic()
        statuses = [client.get("/api/alice/tasks", headers=headers).status_code for _ in range(5)]
        assert statuses == [200] * 5  # over the limit, but the limit cannot be checked: served
        assert time.monotonic() - started < 2
        metrics = client.get("/metrics").text
    assert "rate_limit_storage_errors_total 5.0" in metrics
    warnings = [line for line in capfd.readouterr().err.splitlines() if "storage failed" in line]
    assert len(warnings) == 1, warnings  # one line for the outage, not one per request
    assert "WARNING" in warnings[0]
    assert "ConnectionError" in warnings[0]


async def test_a_stalled_redis_costs_one_timeout_then_nothing_until_retried(
    redis_server: RedisServer, clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    unchecked: list[None] = []
    limiter = RateLimiter(5, redis_server.url, on_unchecked=lambda: unchecked.append(None))

    async def timed(user: str) -> tuple[float | None, float]:
        started = time.perf_counter()
        wait = await limiter.retry_after(user)
        return wait, time.perf_counter() - started

    with caplog.at_level(logging.INFO, logger="backend.ratelimit"):
        assert await limiter.retry_after("alice") is None
        redis_server.process.send_signal(signal.SIGSTOP)  # accepts, never answers: a timeout
        wait, spent = await timed("alice")
        assert wait is None
        assert ratelimit.COMMAND_TIMEOUT_SECONDS <= spent < ratelimit.COMMAND_TIMEOUT_SECONDS + 0.5
        wait, spent = await timed("alice")  # within a second of the failure: not even tried
        assert (wait, len(unchecked)) == (None, 2)
        assert spent < 0.05
        clock.now += ratelimit.RETRY_STORAGE_AFTER_SECONDS
        wait, spent = await timed("alice")  # tried again, timed out again, not logged again
        assert (wait, len(unchecked)) == (None, 3)
        assert spent >= ratelimit.COMMAND_TIMEOUT_SECONDS
        redis_server.process.send_signal(signal.SIGCONT)
        clock.now += ratelimit.RETRY_STORAGE_AFTER_SECONDS
        assert await limiter.retry_after("bob") is None
        assert len(unchecked) == 3
    await limiter.aclose()
    failed, answers = [r for r in caplog.records if r.name == "backend.ratelimit"]
    assert failed.levelno == logging.WARNING
    assert failed.getMessage().startswith("rate-limit storage failed (TimeoutError: ")
    assert failed.getMessage().endswith(
        "serving requests without the limit (1 so far) until it answers"
    )
    assert answers.levelno == logging.INFO
    assert answers.getMessage() == (
        "rate-limit storage answers again; 3 requests were served without the limit"
    )


@pytest.mark.parametrize(
    ("url", "line"),
    [
        (
            "memcached://app:hunter2@cache:11211",
            "must be memory:// or async+redis://host:port (async+rediss:// with TLS, "
            "async+redis+unix://), not memcached://",
        ),
        ("async+redis://:hunter2@:6379", "needs host:port"),
        ("redis://:hunter2@cache", "needs host:port (Redis listens on 6379 unless told otherwise)"),
        ("rediss://default:hunter2@cache:tls", "the port is not a number from 0 to 65535"),
        ("async+redis+unix://", "names no socket path"),
        ("hunter2", "must be memory:// or"),
    ],
)
def test_a_bad_storage_url_stops_the_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, line: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    monkeypatch.setenv("RATE_LIMIT_STORAGE_URL", url)
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit(Settings)
    assert str(stopped.value).startswith(f"configuration error: RATE_LIMIT_STORAGE_URL: {line}")
    assert "\n" not in str(stopped.value)
    assert "hunter2" not in str(stopped.value)  # credentials never echoed


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "async+memory://",
        "async+redis://127.0.0.1:6379/0",
        "redis://cache:6379",
        "async+rediss://default:secret@eu1-upstash.example.com:6379",
        "async+redis+unix:///run/redis.sock",
    ],
)
async def test_storage_urls_that_are_accepted(url: str) -> None:
    settings = Settings(_env_file=None, better_auth_secret=SECRET, rate_limit_storage_url=url)
    limiter = RateLimiter(5, settings.rate_limit_storage_url)  # built without connecting
    await limiter.aclose()
