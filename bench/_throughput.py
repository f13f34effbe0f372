"""`make bench`: the API side by side with a raw Starlette + asyncpg ceiling, in one run.

Closed loops (wrk) here; then bench/_openloop.py's overload table (open loop, 0.5x-4x of
capacity), in its own report.

    .venv/bin/python -m bench._throughput        # writes bench/results/<date>.md (+ chart)

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
import statistics
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

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONNECTIONS = 64
SCENARIOS = ("list", "get", "create", "keyed-create", "toggle", "mixed")
CURVE_CONNECTIONS = (8, 32, 64, 128, 256)
CURVE_SECONDS = float(os.environ.get("BENCH_CURVE_SECONDS", "6"))
OUTLIER = 0.15  # a round this far from its median (req/s) is flagged
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
class Run:
    server: str
    scenario: str
    connections: int
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
        # Answered requests, refusals excluded: past ~200 connections admission control
        # answers some 503 `overloaded` (cheap, fast), which are not throughput.
        return (self.requests - self.non_2xx) / self.seconds


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
    run = Run(
        server=server.name,
        scenario=scenario,
        connections=connections,
        cpu_ms_per_request=cpu * 1000 / max(data["requests"], 1),
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
            report = _measure(pg, tmp)
        finally:
            pg.stop()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{STARTED:%Y-%m-%d}.md"
    path.write_text(report, encoding="utf-8")
    print(f"\nwrote {path.relative_to(ROOT)}")
    # Then the open-loop overload table, with its own database and servers.
    from bench import _openloop  # it builds on this module: imported when used

    _openloop.overload(STARTED)


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


def _measure(pg: EmbeddedPostgres, tmp: Path) -> str:
    url = prepare(pg)
    # 42 readers with 20 tasks each, 20 writers with 1.
    load_users = write_users(tmp / "users.txt", asyncio.run(seed(url, 42, 20)))
    write_users(tmp / "writers.txt", asyncio.run(seed(url, 20, 1)))

    ports = iter(range(18000, 18100))
    with ExitStack() as stack:
        api = stack.enter_context(running("api", next(ports), url))
        ceiling = stack.enter_context(running("ceiling", next(ports), url))
        variants = [
            stack.enter_context(running(name, next(ports), url))
            for name in (
                "api, pydantic-core serialisation",
                "api, pooler mode (no statement cache)",
            )
        ]
        for server in (api, ceiling, *variants):
            wrk(server, "mixed", load_users, 3, CONNECTIONS)  # warm-up, not reported
            server.runs.clear()

        for _ in range(ROUNDS):
            for scenario in SCENARIOS:
                for server in (api, ceiling):
                    wrk(server, scenario, load_users, SECONDS, CONNECTIONS)
            for server in variants:
                wrk(server, "mixed", load_users, SECONDS, CONNECTIONS)
        rss = {server.name: server.rss_mib() for server in (api, ceiling)}

        # The saturation curve: mixed workload from 8 to 256 connections, alternating.
        curve: list[Run] = []
        for _ in range(ROUNDS):
            for connections in CURVE_CONNECTIONS:
                for server in (api, ceiling):
                    curve.append(wrk(server, "mixed", load_users, CURVE_SECONDS, connections))
        for server in (api, ceiling):  # the curve runs are reported on their own
            server.runs[:] = [r for r in server.runs if r not in curve]
        log = [
            f"{r.server} {r.scenario} {r.__dict__}"
            for s in (api, ceiling, *variants)
            for r in s.runs
        ]
        log += [f"curve {r.server} c{r.connections} {r.__dict__}" for r in curve]

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
        variants,
        curve,
        rss,
        small,
        large,
        rows_small,
        rows_large,
        explain_small,
        explain_large,
        log,
    )


def _rounds(runs: list[Run]) -> str:
    middle = statistics.median(r.rps for r in runs)
    return " | ".join(
        f"{r.rps:.0f} req/s, p99 {r.p99_ms:.0f} ms"
        + (" **(outlier)**" if abs(r.rps - middle) > OUTLIER * middle else "")
        for r in runs
    )


def _chart(curve: list[Run]) -> str | None:
    """The curve as a PNG beside the report (bench extra: matplotlib); its file name."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, colour in (("api", "tab:blue"), ("ceiling", "tab:gray")):
        points = [
            {
                k: statistics.median(
                    getattr(r, k) for r in curve if r.server == name and r.connections == c
                )
                for k in ("rps", "p50_ms", "p99_ms")
            }
            for c in CURVE_CONNECTIONS
        ]
        throughput.plot(
            CURVE_CONNECTIONS, [p["rps"] for p in points], "o-", color=colour, label=name
        )
        latency.plot(
            CURVE_CONNECTIONS,
            [p["p99_ms"] for p in points],
            "o-",
            color=colour,
            label=f"{name} p99",
        )
        latency.plot(
            CURVE_CONNECTIONS,
            [p["p50_ms"] for p in points],
            "o--",
            color=colour,
            alpha=0.6,
            label=f"{name} p50",
        )
    for axis in (throughput, latency):
        axis.set_xscale("log", base=2)
        axis.set_xticks(CURVE_CONNECTIONS, [str(c) for c in CURVE_CONNECTIONS])
        axis.set_xlabel("concurrent connections (wrk)")
        axis.grid(alpha=0.3)
        axis.legend()
    throughput.set_ylabel("requests/s")
    throughput.set_title("Throughput, mixed workload")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)")
    latency.set_title("Latency: p50 (dashed) and p99")
    figure.tight_layout()
    name = f"{STARTED:%Y-%m-%d}-curve.png"
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    figure.savefig(results / name, dpi=110)
    plt.close(figure)
    return name


def _median(runs: list[Run], scenario: str, attribute: str) -> float:
    return float(statistics.median(getattr(r, attribute) for r in runs if r.scenario == scenario))


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


def _report(
    api: Server,
    ceiling: Server,
    variants: list[Server],
    curve: list[Run],
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
        f"# Throughput benchmark, started {STARTED:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `make bench` (`.venv/bin/python -m bench._throughput`). Machine: {cpu} cores; "
        f"servers pinned to core {SERVER_CORE}, wrk (1 thread, {CONNECTIONS} connections) to core "
        f"{LOAD_CORE}, PostgreSQL unpinned. One uvicorn worker per server (uvloop, httptools, "
        f"no access log), pool of 10. PostgreSQL with synchronous_commit=off (a throwaway "
        f"database; the API layer is measured, not the disk). {SECONDS:.0f} s per run, "
        f"{ROUNDS} rounds alternating "
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
    everyone = (api, ceiling, *variants)
    non_2xx = sum(r.non_2xx + r.socket_errors for server in everyone for r in server.runs)
    non_2xx += sum(r.non_2xx + r.socket_errors for r in curve)
    lines += [
        "",
        f"Non-2xx responses and socket errors over all runs: {non_2xx}.",
        "",
        "## Every round",
        "",
        f"req/s and p99 of each round, in the order run. A round more than {OUTLIER:.0%} from "
        "its median req/s is flagged **(outlier)**: it counts in the median like any other, "
        "but it is not hidden.",
        "",
        "| server | scenario | " + " | ".join(f"round {n + 1}" for n in range(ROUNDS)) + " |",
        "|---|---|" + "---|" * ROUNDS,
    ]
    for server in everyone:
        for scenario in SCENARIOS:
            runs = [r for r in server.runs if r.scenario == scenario]
            if runs:
                lines.append(f"| {server.name} | {scenario} | {_rounds(runs)} |")
    lines += [
        "",
        "## Variants and earlier commits (mixed workload, same rounds)",
        "",
        "| variant | req/s | vs api | p50 ms | p99 ms | CPU ms/req |",
        "|---|---|---|---|---|---|",
    ]
    api_mixed = _median(api.runs, "mixed", "rps")
    for server in (api, *variants):
        rps = _median(server.runs, "mixed", "rps")
        p50, p99 = _median(server.runs, "mixed", "p50_ms"), _median(server.runs, "mixed", "p99_ms")
        cpu_ms = _median(server.runs, "mixed", "cpu_ms_per_request")
        lines.append(
            f"| {server.name} | {rps:.0f} | {rps / api_mixed:.2f}x | {p50:.1f} | {p99:.1f} | "
            f"{cpu_ms:.3f} |"
        )
    chart = _chart(curve)
    lines += [
        "",
        "## Saturation curve (mixed workload)",
        "",
        f"{CURVE_SECONDS:.0f} s per point, {ROUNDS} rounds alternating api/ceiling at each "
        "connection count; medians.",
        "",
        "| connections | api req/s | ceiling req/s | ratio | api p50 / p99 ms | "
        "ceiling p50 / p99 ms | api p99 / ceiling p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for connections in CURVE_CONNECTIONS:
        a, c = (
            {
                k: statistics.median(
                    getattr(r, k)
                    for r in curve
                    if r.server == name and r.connections == connections
                )
                for k in ("rps", "p50_ms", "p99_ms")
            }
            for name in ("api", "ceiling")
        )
        lines.append(
            f"| {connections} | {a['rps']:.0f} | {c['rps']:.0f} | {a['rps'] / c['rps']:.2f}x | "
            f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | "
            f"{a['p99_ms'] / c['p99_ms']:.2f}x |"
        )
    lines += ["", f"![saturation curve]({chart})" if chart else "(matplotlib missing: no chart)"]
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
