"""Before/after, and nothing else: the API at HEAD against the API at an earlier commit.

    .venv/bin/python -m bench._compare d45dd10        # BENCH_ROUNDS (8), BENCH_SECONDS (10)
    BENCH_SCENARIOS=mixed .venv/bin/python -m bench._compare d45dd10   # one lever, one figure

`make bench` answers "how far from the ceiling"; this answers "did a change cost requests that do
not use it", with more rounds for the one question. Same database, same seeded users, same wrk
script as `make bench`; the two servers alternate, and which goes first swaps every round, so
drift and the host's slow windows hit both alike. Prints every run and the medians, with the
ratio of CPU per request (the figure least moved by a noisy neighbour).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench._records import Run
from bench._throughput import (
    CONNECTIONS,
    ROUNDS,
    SECONDS,
    _worktree,
    running,
    seed,
    throwaway_database,
    write_users,
    wrk,
)

ALL_SCENARIOS = ("mixed", "list", "get", "create", "toggle")
SCENARIOS = tuple(os.environ.get("BENCH_SCENARIOS", ",".join(ALL_SCENARIOS)).split(","))


def _median(runs: list[Run], attribute: str) -> float:
    values = [r.rps if attribute == "rps" else getattr(r, attribute) for r in runs]
    return float(statistics.median(values))


def main(commit: str) -> None:
    rounds = ROUNDS if "BENCH_ROUNDS" in os.environ else 8
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        tmp = Path(scratch)
        url = throwaway_database(stack, tmp)
        users = write_users(tmp / "users.txt", asyncio.run(seed(url, 42, 20)))
        write_users(tmp / "writers.txt", asyncio.run(seed(url, 20, 1)))

        head = stack.enter_context(running("api", 18200, url))
        tree, subject = stack.enter_context(_worktree(commit, tmp))
        before = stack.enter_context(running(f"api @ {commit[:7]}", 18201, url, cwd=tree))
        for server in (head, before):
            wrk(server, "mixed", users, 3, CONNECTIONS)  # warm-up, not reported
            server.runs.clear()
        for n in range(rounds):
            pair = (head, before) if n % 2 == 0 else (before, head)
            for scenario in SCENARIOS:
                for server in pair:
                    wrk(server, scenario, users, SECONDS, CONNECTIONS)

    print(
        f"\nHEAD vs {commit} ({subject}): medians of {rounds} alternating rounds of {SECONDS:g} s"
    )
    print("| scenario | HEAD req/s | before | HEAD/before | p99 HEAD / before | CPU ms/req |")
    print("|---|---|---|---|---|---|")
    for scenario in SCENARIOS:
        now = [r for r in head.runs if r.scenario == scenario]
        then = [r for r in before.runs if r.scenario == scenario]
        rps = _median(now, "rps"), _median(then, "rps")
        p99 = _median(now, "p99_ms"), _median(then, "p99_ms")
        cpu = _median(now, "cpu_ms_per_request"), _median(then, "cpu_ms_per_request")
        print(
            f"| {scenario} | {rps[0]:.0f} | {rps[1]:.0f} | {rps[0] / rps[1]:.2f}x "
            f"| {p99[0]:.1f} / {p99[1]:.1f} ms "
            f"| {cpu[0]:.3f} / {cpu[1]:.3f} = {cpu[0] / cpu[1]:.2f}x |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench._compare <commit>")
    main(sys.argv[1])
