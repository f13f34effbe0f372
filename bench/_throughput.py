"""`make bench`: the API side by side with a raw Starlette + asyncpg ceiling, in one run.

    .venv/bin/python -m bench._throughput        # writes bench/results/<date>.md

One throwaway embedded PostgreSQL, seeded; the servers run as deployed (uvicorn, uvloop,
httptools, access log off), pinned to core 0; wrk (one thread, 64 connections) is pinned to
core 1. Scenarios alternate between servers round by round, so drift hits both alike.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import jwt
import psutil

from backend.db import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = 64
SCENARIOS = ("list", "get", "create", "toggle", "mixed")
SERVER_CORE, LOAD_CORE = "0", "1"
SECRET = secrets.token_urlsafe(48)
VENV_BIN = Path(sys.executable).parent

SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "api": (["backend.main:create_app", "--factory"], {}),
    "ceiling": (["bench._ceiling:app"], {}),
    # Before/after variants, measured on the mixed workload only.
    "api, pydantic-core serialisation": (["bench._variants:pydantic_app", "--factory"], {}),
    "api, pooler mode (transactions, no statement cache)": (
        ["backend.main:create_app", "--factory"],
        {"DB_STATEMENT_CACHE": "false"},
    ),
}


@dataclass
class Run:
    server: str
    scenario: str
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_ms_per_request: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    runs: list[Run] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        procs = [psutil.Process(self.process.pid)]
        procs += procs[0].children(recursive=True)
        return float(sum(p.cpu_times().user + p.cpu_times().system for p in procs))

    def rss_mib(self) -> list[float]:
        root = psutil.Process(self.process.pid)
        workers = root.children(recursive=True) or [root]
        return [w.memory_info().rss / 2**20 for w in workers]


def _user_id() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


def _token(user_id: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + 86400}, SECRET, algorithm="HS256")


async def seed(url: str, users: int, tasks_each: int) -> list[tuple[str, str, list[int]]]:
    connection = await asyncpg.connect(url)
    try:
        seeded = []
        for _ in range(users):
            user_id = _user_id()
            await connection.execute("INSERT INTO users (id) VALUES ($1)", user_id)
            rows = await connection.fetch(
                "INSERT INTO tasks (user_id, title, completed) "
                "SELECT $1, 'seeded task ' || g, g % 3 = 0 FROM generate_series(1, $2) g "
                "RETURNING id",
                user_id,
                tasks_each,
            )
            seeded.append((user_id, _token(user_id), [row["id"] for row in rows]))
        return seeded
    finally:
        await connection.close()


async def sql(url: str, *statements: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        out: list[str] = []
        for statement in statements:
            rows = await connection.fetch(statement)
            out += [str(next(iter(row.values()))) for row in rows]
        return out
    finally:
        await connection.close()


def write_users(path: Path, users: list[tuple[str, str, list[int]]]) -> Path:
    path.write_text(
        "".join(f"{u} {t} {','.join(map(str, ids))}\n" for u, t, ids in users), encoding="utf-8"
    )
    return path


@contextmanager
def running(name: str, port: int, database_url: str) -> Iterator[Server]:
    target, extra_env = SERVERS[name]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
        **extra_env,
    }
    command = ["taskset", "-c", SERVER_CORE, str(VENV_BIN / "uvicorn"), *target]
    command += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    command += ["--no-access-log", "--log-level", "warning", "--workers", "1"]
    process = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if _healthy(url):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.2)
    try:
        yield Server(name, url, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _healthy(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    finally:
        connection.close()


def wrk(server: Server, scenario: str, users: Path, seconds: float, connections: int) -> Run:
    env = {**os.environ, "SCENARIO": scenario, "USERS_FILE": str(users)}
    env["WRITERS_FILE"] = str(users.with_name("writers.txt"))
    command = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s"]
    command += ["--timeout", "10s", "-s", str(ROOT / "bench/wrk/api.lua"), server.url]
    cpu_before = server.cpu_seconds()
    output = subprocess.run(  # noqa: S603
        command, env=env, capture_output=True, text=True, check=True
    ).stdout
    cpu = server.cpu_seconds() - cpu_before
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    data.pop("mean_ms")
    run = Run(
        server=server.name,
        scenario=scenario,
        cpu_ms_per_request=cpu * 1000 / max(data["requests"], 1),
        **data,
    )
    server.runs.append(run)
    print(
        f"{server.name:52} {scenario:7} {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f}  "
        f"p99 {run.p99_ms:6.2f} ms  cpu {run.cpu_ms_per_request:.3f} ms/req  "
        f"non-2xx {run.non_2xx}",
        flush=True,
    )
    return run


LIST_QUERY = (
    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id, user_id, title, description, completed, "
    "created_at, updated_at FROM tasks WHERE user_id = '{user}' AND id > 0 ORDER BY id LIMIT 1001"
)


def main() -> None:
    if not Path("/usr/bin/wrk").exists():
        raise SystemExit("wrk is needed: apt-get install wrk (make bench does it)")
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        pg = EmbeddedPostgres(tmp / "pg", delete_on_stop=True)
        try:
            report = _measure(pg, tmp)
        finally:
            pg.stop()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{started:%Y-%m-%d}.md"
    path.write_text(report, encoding="utf-8")
    print(f"\nwrote {path.relative_to(ROOT)}")


def migrate(url: str) -> None:
    subprocess.run(  # noqa: S603
        [str(VENV_BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        capture_output=True,
    )


BULK_ROWS = (
    "INSERT INTO users (id) SELECT 'bulk-user-' || g FROM generate_series(1, 10000) g",
    "INSERT INTO tasks (user_id, title) SELECT 'bulk-user-' || (g % 10000 + 1), "
    "'bulk task ' || g FROM generate_series(1, 1000000) g",
)


def _measure(pg: EmbeddedPostgres, tmp: Path) -> str:
    url = pg.url()
    migrate(url)
    # 42 readers with 20 tasks each, 20 writers with 1.
    load_users = write_users(tmp / "users.txt", asyncio.run(seed(url, 42, 20)))
    write_users(tmp / "writers.txt", asyncio.run(seed(url, 20, 1)))

    ports = iter(range(18000, 18100))
    log: list[str] = []
    with (
        running("api", next(ports), url) as api,
        running("ceiling", next(ports), url) as ceiling,
        running("api, pydantic-core serialisation", next(ports), url) as pydantic,
        running("api, pooler mode (transactions, no statement cache)", next(ports), url) as pooler,
    ):
        for server in (api, ceiling, pydantic, pooler):
            wrk(server, "mixed", load_users, 3, CONNECTIONS)  # warm-up, not reported
            server.runs.clear()

        for _ in range(ROUNDS):
            for scenario in SCENARIOS:
                for server in (api, ceiling):
                    wrk(server, scenario, load_users, SECONDS, CONNECTIONS)
            for server in (pydantic, pooler):
                wrk(server, "mixed", load_users, SECONDS, CONNECTIONS)
        rss = {server.name: server.rss_mib() for server in (api, ceiling)}
        log = [
            f"{r.server} {r.scenario} {r.__dict__}"
            for s in (api, ceiling, pydantic, pooler)
            for r in s.runs
        ]

    # Scale, side by side: two databases, each with 50 users of 20 tasks (1,000 rows); the
    # large one also holds 1,000,000 rows of 10,000 other users. One API server on each;
    # list requests alternate between them round by round.
    scale: dict[str, tuple[Path, str, str]] = {}
    for size in ("small", "large"):
        asyncio.run(sql(url, f"CREATE DATABASE scale_{size}"))
        size_url = pg.url(f"scale_{size}")
        migrate(size_url)
        users = asyncio.run(seed(size_url, 50, 20))
        if size == "large":
            asyncio.run(sql(size_url, *BULK_ROWS))
        asyncio.run(sql(size_url, "VACUUM ANALYZE tasks", "CHECKPOINT"))
        rows = asyncio.run(sql(size_url, "SELECT count(*) FROM tasks"))[0]
        explain = "\n".join(asyncio.run(sql(size_url, LIST_QUERY.format(user=users[0][0]))))
        scale[size] = (write_users(tmp / f"scale-{size}.txt", users), rows, explain)
    with (
        running("api", next(ports), pg.url("scale_small")) as small_api,
        running("api", next(ports), pg.url("scale_large")) as large_api,
    ):
        for server, size in ((small_api, "small"), (large_api, "large")):
            wrk(server, "list", scale[size][0], 3, 8)  # warm-up
        small_runs, large_runs = [], []
        for _ in range(3):
            small_runs.append(wrk(small_api, "list", scale["small"][0], SECONDS, 8))
            large_runs.append(wrk(large_api, "list", scale["large"][0], SECONDS, 8))
    small = min(
        small_runs, key=lambda r: abs(r.p50_ms - statistics.median(x.p50_ms for x in small_runs))
    )
    large = min(
        large_runs, key=lambda r: abs(r.p50_ms - statistics.median(x.p50_ms for x in large_runs))
    )
    rows_small, explain_small = scale["small"][1], scale["small"][2].splitlines()
    rows_large, explain_large = scale["large"][1], scale["large"][2].splitlines()

    return _report(
        api,
        ceiling,
        pydantic,
        pooler,
        rss,
        small,
        large,
        rows_small,
        rows_large,
        explain_small,
        explain_large,
        log,
    )


def _median(runs: list[Run], scenario: str, attribute: str) -> float:
    return float(statistics.median(getattr(r, attribute) for r in runs if r.scenario == scenario))


def _report(
    api: Server,
    ceiling: Server,
    pydantic: Server,
    pooler: Server,
    rss: dict[str, list[float]],
    small: Run,
    large: Run,
    rows_small: str,
    rows_large: str,
    explain_small: list[str],
    explain_large: list[str],
    log: list[str],
) -> str:
    cpu = psutil.cpu_count()
    lines = [
        f"# Throughput benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `make bench` (`.venv/bin/python -m bench._throughput`). Machine: {cpu} cores; "
        f"servers pinned to core {SERVER_CORE}, wrk (1 thread, {CONNECTIONS} connections) to core "
        f"{LOAD_CORE}, PostgreSQL unpinned. One uvicorn worker per server (uvloop, httptools, "
        f"no access log), pool of 10. {SECONDS:.0f} s per run, {ROUNDS} rounds alternating "
        "api/ceiling per scenario; medians shown. Each request picks one of 42 users (20 tasks "
        "each); creates go to 20 other users, so lists stay at 20 tasks. Mixed: 50% list, "
        "20% get, 20% toggle, 10% create.",
        "",
        "| scenario | api req/s | ceiling req/s | api / ceiling | api p50 / p95 / p99 ms | "
        "ceiling p50 / p95 / p99 ms | api CPU ms/req | ceiling CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        a = {
            k: _median(api.runs, scenario, k)
            for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "cpu_ms_per_request")
        }
        c = {k: _median(ceiling.runs, scenario, k) for k in a}
        lines.append(
            f"| {scenario} | {a['rps']:.0f} | {c['rps']:.0f} | **{a['rps'] / c['rps']:.2f}x** | "
            f"{a['p50_ms']:.1f} / {a['p95_ms']:.1f} / {a['p99_ms']:.1f} | "
            f"{c['p50_ms']:.1f} / {c['p95_ms']:.1f} / {c['p99_ms']:.1f} | "
            f"{a['cpu_ms_per_request']:.3f} | {c['cpu_ms_per_request']:.3f} |"
        )
    non_2xx = sum(r.non_2xx + r.socket_errors for s in (api, ceiling) for r in s.runs)
    lines += [
        "",
        f"Non-2xx responses and socket errors over all runs: {non_2xx}.",
        "",
        "## What the design choices buy (mixed workload, same run)",
        "",
        "| variant | req/s | vs api | p99 ms |",
        "|---|---|---|---|",
    ]
    api_mixed = _median(api.runs, "mixed", "rps")
    for server in (api, pydantic, pooler):
        rps = _median(server.runs, "mixed", "rps")
        p99 = _median(server.runs, "mixed", "p99_ms")
        lines.append(f"| {server.name} | {rps:.0f} | {rps / api_mixed:.2f}x | {p99:.1f} |")
    lines += [
        "",
        "## Scale: list latency with 1,000,000 other users' rows",
        "",
        f"Two databases side by side, one API server on each: {rows_small} rows (50 users x 20 "
        f"tasks) and {rows_large} rows (the same plus 10,000 other users' 1,000,000 rows), both "
        "`VACUUM ANALYZE`d. 8 connections list a random user's 20 tasks; 3 rounds alternating "
        "between the two, the median round shown.",
        "",
        "| rows in tasks | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| {rows_small} | {small.rps:.0f} | {small.p50_ms:.2f} | {small.p99_ms:.2f} |",
        f"| {rows_large} | {large.rps:.0f} | {large.p50_ms:.2f} | {large.p99_ms:.2f} |",
        "",
        f"p50 ratio large/small: **{large.p50_ms / small.p50_ms:.2f}x**, "
        f"p99 ratio: {large.p99_ms / small.p99_ms:.2f}x.",
        "",
        "Plan at the small size:",
        "```",
        *explain_small,
        "```",
        "Plan at the large size:",
        "```",
        *explain_large,
        "```",
        "",
        "## Memory",
        "",
        *(
            f"- {name}: RSS per worker after the runs: "
            f"{', '.join(f'{mib:.1f} MiB' for mib in values)}"
            for name, values in rss.items()
        ),
        "",
        "## Raw runs",
        "",
        "```",
        *log,
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
