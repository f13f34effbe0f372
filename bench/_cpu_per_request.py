"""CPU per request of the app in-process, HEAD against earlier commits: for levers too small
for wrk to see.

    .venv/bin/python -m bench._cpu_per_request 4661d19 [b8ca45b ...]
    # BENCH_ROUNDS (30) rounds of BENCH_REQUESTS (1000) requests per commit

On this 2-core VM wrk's req/s swing 10-15% from run to run, more than a lever of a few percent
moves. This measures only what such a lever changes, the Python CPU a request costs: each
commit's app (create_app: its middleware, dependencies and handlers, on the real PostgreSQL)
runs in a process of its own and is called over ASGI, in-process and one request at a time,
with wrk's mixed workload (bench/wrk/api.lua: 50% list, 20% get, 20% toggle, 10% create); its
CPU time (time.process_time, so the wait for the database is not in it) is divided by the
requests. uvicorn's HTTP parsing is left out, the same for every commit. The processes stay
up; rounds are short and alternate, the order swapped every round, so the VM's slow spells
(CPU time per request moves 10-15% over seconds here) hit neighbours alike; the figure is the
median, over rounds, of each commit's CPU per request over HEAD's in the same round.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "1000"))
WARM_UP = 500
MIX = ("list",) * 5 + ("get",) * 2 + ("toggle",) * 2 + ("create",)
CREATE_BODY = b'{"title": "benchmark task", "description": "written in-process"}'

Users = list[tuple[str, str, list[int]]]


# The worker: runs in each commit's tree, so it imports nothing of bench/ (which may differ).


def http_scope(method: str, path: str, token: str, body: bool = False) -> dict[str, Any]:
    """An ASGI scope for one request over HTTP/1.1 as uvicorn builds it, with this bearer token
    (and a JSON body's headers when `body`)."""
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())]
    if body:
        headers += [(b"content-type", b"application/json")]
        headers += [(b"content-length", str(len(CREATE_BODY)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "state": {},
    }


async def _serve_rounds(users: Users, writers: Users) -> None:
    from backend.main import create_app  # this commit's, from PYTHONPATH

    app = create_app()
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def one(rng: random.Random) -> None:
        kind = rng.choice(MIX)
        user_id, token, tasks = rng.choice(writers if kind == "create" else users)
        base = f"/api/{user_id}/tasks"
        body = b""
        if kind == "list":
            scope = http_scope("GET", base, token)
        elif kind == "get":
            scope = http_scope("GET", f"{base}/{rng.choice(tasks)}", token)
        elif kind == "toggle":
            scope = http_scope("PATCH", f"{base}/{rng.choice(tasks)}/complete", token)
        else:
            scope, body = http_scope("POST", base, token, True), CREATE_BODY

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, receive, send)  # type: ignore[arg-type]

    async with app.router.lifespan_context(app):
        rng = random.Random(1)
        for _ in range(WARM_UP):
            await one(rng)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            count, seed = (int(word) for word in line.split())
            rng, statuses[:] = random.Random(seed), []
            started = time.process_time()
            for _ in range(count):
                await one(rng)
            cpu = time.process_time() - started
            non_2xx = sum(1 for status in statuses if not 200 <= status < 300)
            print(json.dumps({"cpu_us": cpu / count * 1e6, "non_2xx": non_2xx}), flush=True)


def _worker() -> None:
    users = json.loads(Path(os.environ["BENCH_USERS"]).read_text())
    writers = json.loads(Path(os.environ["BENCH_WRITERS"]).read_text())
    asyncio.run(_serve_rounds(users, writers))


# The parent: seeds one database, starts a worker per commit, alternates rounds.


@contextmanager
def _worker_process(tree: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, __file__, "--worker"],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the worker in {tree} did not start")
        yield process
    finally:
        process.kill()
        process.wait()


def _round(process: subprocess.Popen[str], seed: int) -> dict[str, float]:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(f"{REQUESTS} {seed}\n")
    process.stdin.flush()
    result: dict[str, float] = json.loads(process.stdout.readline())
    return result


def main(commits: list[str]) -> None:
    from bench._throughput import ROOT, SECRET, _worktree, seed, throwaway_database

    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        tmp = Path(scratch)
        url = throwaway_database(stack, tmp)
        users, writers = tmp / "users.json", tmp / "writers.json"
        users.write_text(json.dumps(asyncio.run(seed(url, 42, 20))))
        writers.write_text(json.dumps(asyncio.run(seed(url, 20, 1))))
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "BETTER_AUTH_SECRET": SECRET,
            "LOG_LEVEL": "WARNING",
            "BENCH_USERS": str(users),
            "BENCH_WRITERS": str(writers),
        }
        names = ["HEAD", *commits]
        trees = [ROOT]
        subjects = {"HEAD": "the checkout"}
        for commit in commits:
            tree, subjects[commit] = stack.enter_context(_worktree(commit, tmp))
            trees.append(tree)
        workers = [stack.enter_context(_worker_process(tree, env)) for tree in trees]
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for n in range(ROUNDS):
            order = list(zip(names, workers, strict=True))
            for name, process in order if n % 2 == 0 else reversed(order):
                result = _round(process, seed=n)
                if result["non_2xx"]:
                    raise SystemExit(f"{name}: {result['non_2xx']:.0f} non-2xx answers")
                cpu[name].append(result["cpu_us"])
                print(f"round {n + 1} {name:>8} {result['cpu_us']:7.1f} us/request", flush=True)
    print(f"\nCPU per request, in-process: {ROUNDS} alternating rounds of {REQUESTS} requests")
    print("| commit | median us/request | median of its / HEAD's, round by round |")
    print("|---|---|---|")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu["HEAD"], strict=True))
        median = statistics.median(cpu[name])
        print(f"| {name} ({subjects[name][:60]}) | {median:.1f} | {ratio:.3f}x |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    elif len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench._cpu_per_request <commit> [<commit> ...]")
    else:
        main(sys.argv[1:])
