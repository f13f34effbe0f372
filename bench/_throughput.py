"""`make bench`: the API side by side with a raw Starlette + asyncpg ceiling, in one run.

Closed loops (wrk) here; then bench/_openloop.py's overload table (open loop, 0.5x-4x of
capacity), in its own report.

    .venv/bin/python -m bench._throughput    # bench/results/<date>.json, then its .md (+ chart)

What it measured goes to the JSON as records (bench/_records.py), every run with its round;
bench/_render.py makes the report from them (`python -m bench._render <date>.json` again).
This module measures and must not summarise: no medians here.

One throwaway embedded PostgreSQL, seeded; the servers run as deployed (uvicorn, uvloop,
httptools, access log off), pinned to core 0; wrk (one thread, 64 connections) is pinned to
core 1. Scenarios alternate between servers round by round, so drift hits both alike; every
round is reported, and a round far from its median is flagged rather than hidden.

Before/after lines for a change come from bench/_compare.py (wrk, HEAD against a commit) and
bench/_cpu_per_request.py (CPU per request in-process, for levers smaller than wrk's noise).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import jwt
import psutil

from backend.db import EmbeddedPostgres
from bench import _render
from bench._records import Run, Throughput, save

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONNECTIONS = 64
SCENARIOS = ("list", "get", "create", "keyed-create", "toggle", "mixed")
CURVE_CONNECTIONS = (8, 32, 64, 128, 256)
CURVE_SECONDS = float(os.environ.get("BENCH_CURVE_SECONDS", "6"))
SERVER_CORE, LOAD_CORE = "0", "1"
SECRET = secrets.token_urlsafe(48)
VENV_BIN = Path(sys.executable).parent
STARTED = datetime.now(UTC)  # names the report and its chart alike, even across midnight

API = ["backend.main:create_app", "--factory"]
# As make run serves it: admission control refuses from the parser (backend/admission.py).
PARSER_DOOR = ["--http", "backend.admission:AdmissionHttpToolsProtocol"]
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "api": ([*API, *PARSER_DOOR], {}),
    "ceiling": (["bench._ceiling:app"], {}),
    # The overload table's before (bench/_openloop.py): every request taken in; and
    # admission refusing through the app's middleware only.
    "api, admission off": (API, {"ADMISSION_MAX_CONCURRENCY": "0"}),
    "api, admission in the app only": (API, {}),
    # Before/after variants, measured on the mixed workload only.
    "api, pydantic-core serialisation": (["bench._variants:pydantic_app", "--factory"], {}),
    "api, pooler mode (no statement cache)": (
        ["backend.main:create_app", "--factory"],
        {"DB_STATEMENT_CACHE": "false"},
    ),
}


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
def running(name: str, port: int, database_url: str, cwd: Path = ROOT) -> Iterator[Server]:
    """Serve `name` (see SERVERS) from `cwd`: the checkout, or a worktree of an earlier commit
    (uvicorn puts its directory first on sys.path, ahead of the editable install)."""
    # An earlier commit: through the parser door when it has one, as make run served it then.
    door = PARSER_DOOR if (cwd / "backend" / "admission.py").exists() else []
    target, extra_env = SERVERS.get(name, ([*API, *door], {}))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
        **extra_env,
    }
    command = ["taskset", "-c", SERVER_CORE, str(VENV_BIN / "uvicorn")]
    command += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    command += ["--no-access-log", "--log-level", "warning", "--workers", "1"]
    command += ["--backlog", "4096"]  # as make run: room for the open loop's 4,096 connections
    command += target  # last: its own --http wins
    process = subprocess.Popen(command, cwd=cwd, env=env)  # noqa: S603
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


def wrk(
    server: Server,
    scenario: str,
    users: Path,
    seconds: float,
    connections: int,
    *,
    part: str = "",
    round_number: int = 0,
) -> Run:
    """One wrk run against `server`; `part` and `round_number` label it for the report."""
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
    run = Run(
        server=server.name,
        scenario=scenario,
        connections=connections,
        cpu_ms_per_request=cpu * 1000 / max(data["requests"], 1),
        part=part,
        round=round_number,
        **data,
    )
    server.runs.append(run)
    print(
        f"{server.name:52} {scenario:7} c{connections:<4} {run.rps:8.0f} req/s  "
        f"p50 {run.p50_ms:6.2f}  p99 {run.p99_ms:6.2f} ms  "
        f"cpu {run.cpu_ms_per_request:.3f} ms/req  non-2xx {run.non_2xx}",
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
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        pg = EmbeddedPostgres(tmp / "pg", delete_on_stop=True)
        try:
            records = _measure(pg, tmp)
        finally:
            pg.stop()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = save(records, results / f"{STARTED:%Y-%m-%d}.json")
    for written in (path, *_render.render(path)):
        print(f"wrote {written.relative_to(ROOT)}")
    # Then the open-loop overload table, with its own database and servers.
    from bench import _openloop  # it builds on this module: imported when used

    _openloop.overload(STARTED)


def head_commit() -> str:
    """The checkout being measured, as `git describe` names it (`-dirty` with local changes)."""
    return subprocess.run(  # noqa: S603
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def migrate(url: str) -> None:
    subprocess.run(  # noqa: S603
        [str(VENV_BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "DATABASE_URL_UNPOOLED": url},  # never a .env's
        check=True,
        capture_output=True,
    )


BULK_ROWS = (
    "INSERT INTO users (id) SELECT 'bulk-user-' || g FROM generate_series(1, 10000) g",
    "INSERT INTO tasks (user_id, title) SELECT 'bulk-user-' || (g % 10000 + 1), "
    "'bulk task ' || g FROM generate_series(1, 1000000) g",
)


def prepare(pg: EmbeddedPostgres) -> str:
    """`pg` migrated and set up for benchmarks; its URL."""
    url = pg.url()
    migrate(url)
    # This measures the API layer, not the disk: on these VMs a commit's WAL flush stalls now
    # and then (WalSync waits), holding every writer's connection for it. A throwaway database
    # may skip waiting for the flush; every server shares it.
    asyncio.run(sql(url, "ALTER SYSTEM SET synchronous_commit = off", "SELECT pg_reload_conf()"))
    return url


def throwaway_database(stack: ExitStack, tmp: Path) -> str:
    """An embedded PostgreSQL in `tmp`, prepared, stopped and deleted with `stack`; its URL."""
    pg = EmbeddedPostgres(tmp / "pg", delete_on_stop=True)
    stack.callback(pg.stop)
    return prepare(pg)


def _measure(pg: EmbeddedPostgres, tmp: Path) -> Throughput:
    url = prepare(pg)
    # 42 readers with 20 tasks each, 20 writers with 1.
    load_users = write_users(tmp / "users.txt", asyncio.run(seed(url, 42, 20)))
    write_users(tmp / "writers.txt", asyncio.run(seed(url, 20, 1)))

    runs: list[Run] = []  # every reported run, in the order run

    def reported(
        server: Server, part: str, n: int, scenario: str, users: Path, seconds: float, conns: int
    ) -> None:
        runs.append(wrk(server, scenario, users, seconds, conns, part=part, round_number=n))

    variant_names = ["api, pydantic-core serialisation", "api, pooler mode (no statement cache)"]
    ports = iter(range(18000, 18100))
    with ExitStack() as stack:
        api = stack.enter_context(running("api", next(ports), url))
        ceiling = stack.enter_context(running("ceiling", next(ports), url))
        variants = [stack.enter_context(running(name, next(ports), url)) for name in variant_names]
        for server in (api, ceiling, *variants):
            wrk(server, "mixed", load_users, 3, CONNECTIONS)  # warm-up, not reported

        for n in range(1, ROUNDS + 1):
            for scenario in SCENARIOS:
                for server in (api, ceiling):
                    reported(server, "scenarios", n, scenario, load_users, SECONDS, CONNECTIONS)
            for server in variants:
                reported(server, "scenarios", n, "mixed", load_users, SECONDS, CONNECTIONS)
        rss = {server.name: server.rss_mib() for server in (api, ceiling)}

        # The saturation curve: mixed workload from 8 to 256 connections, alternating.
        for n in range(1, ROUNDS + 1):
            for connections in CURVE_CONNECTIONS:
                for server in (api, ceiling):
                    reported(server, "curve", n, "mixed", load_users, CURVE_SECONDS, connections)

    # Scale, side by side: two databases, each with 50 users of 20 tasks (1,000 rows); the
    # large one also holds 1,000,000 rows of 10,000 other users. One API server on each;
    # list requests alternate between them round by round.
    scale: dict[str, Path] = {}
    rows: dict[str, int] = {}
    plans: dict[str, list[str]] = {}
    for size in ("small", "large"):
        asyncio.run(sql(url, f"CREATE DATABASE scale_{size}"))
        size_url = pg.url(f"scale_{size}")
        migrate(size_url)
        users = asyncio.run(seed(size_url, 50, 20))
        if size == "large":
            asyncio.run(sql(size_url, *BULK_ROWS))
        asyncio.run(sql(size_url, "VACUUM ANALYZE tasks", "CHECKPOINT"))
        rows[size] = int(asyncio.run(sql(size_url, "SELECT count(*) FROM tasks"))[0])
        plans[size] = asyncio.run(sql(size_url, LIST_QUERY.format(user=users[0][0])))
        scale[size] = write_users(tmp / f"scale-{size}.txt", users)
    with (
        running("api", next(ports), pg.url("scale_small")) as small_api,
        running("api", next(ports), pg.url("scale_large")) as large_api,
    ):
        sized = ((small_api, "small"), (large_api, "large"))
        for server, size in sized:
            wrk(server, "list", scale[size], 3, 8)  # warm-up
        for n in range(1, 4):
            for server, size in sized:
                reported(server, f"scale-{size}", n, "list", scale[size], SECONDS, 8)

    return Throughput(
        started=STARTED,
        commit=head_commit(),
        cores=psutil.cpu_count(),
        server_core=SERVER_CORE,
        load_core=LOAD_CORE,
        connections=CONNECTIONS,
        seconds=SECONDS,
        rounds=ROUNDS,
        curve_seconds=CURVE_SECONDS,
        scenarios=list(SCENARIOS),
        curve_connections=list(CURVE_CONNECTIONS),
        variants=variant_names,
        runs=runs,
        rss_mib=rss,
        scale_rows=rows,
        scale_plans=plans,
    )


@contextmanager
def _worktree(commit: str, tmp: Path) -> Iterator[tuple[Path, str]]:
    """A detached worktree of `commit` and its subject line; removed afterwards."""
    tree = tmp / f"worktree-{commit}"
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(tree), commit], check=True)  # noqa: S603
    subject = subprocess.run(  # noqa: S603
        [*git, "log", "-1", "--format=%s", commit], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield tree, subject
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)  # noqa: S603


if __name__ == "__main__":
    main()
