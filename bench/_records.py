"""What `make bench` measured, as it writes it: JSON records in bench/results/, one file a report.

bench/_throughput.py writes <date>.json and bench/_openloop.py <date>-overload.json: every run
with its round, and the settings it ran with. bench/_render.py makes the Markdown and charts
from them, so a report can be re-rendered (or re-read) without re-measuring. Plain data only:
nothing here measures, takes a median or renders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One wrk run: bench/wrk/api.lua's figures and the server's CPU per request."""

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
    part: str = ""  # the report's part it feeds: scenarios, curve, scale-small, capacity...
    round: int = 0  # from 1 in a report; 0 elsewhere (bench/_compare.py)

    @property
    def rps(self) -> float:
        # Answered requests, refusals excluded: past ~200 connections admission control
        # answers some 503 `overloaded` (cheap, fast), which are not throughput.
        return (self.requests - self.non_2xx) / self.seconds


@dataclass
class Result:
    """One open-loop run (bench/_openloop.py). Latencies in ms from each request's scheduled
    time."""

    offered_rate: float
    seconds: float
    scheduled: int
    sent: int
    ok: int  # 2xx answered, whenever
    goodput: float  # 2xx answered within the window, per second
    ok_p50_ms: float
    ok_p99_ms: float
    shed: int  # 503 `overloaded` with Retry-After
    shed_p50_ms: float
    shed_p99_ms: float
    other_status: dict[str, int]  # any other status, by code (a 503 without our shape too)
    unsent: int  # scheduled but never sent: every connection busy and the pool at its bound
    connect_errors: int
    resets: int  # connection closed under a request
    garbled: int  # bytes past the end of the response (none may come: nothing is pipelined)
    timeouts: int
    peak_connections: int
    send_lag_p99_ms: float  # how late the generator sent: its own saturation shows here
    generator_cpu: float  # fraction of one core the generator used
    rss_peak_mib: float = 0.0
    rss_end_mib: float = 0.0
    server_cpu: float = 0.0  # fraction of one core the server used during the window
    first_quarter_p50_ms: float = 0.0  # of all answers, by schedule: growth means a queue
    last_quarter_p50_ms: float = 0.0
    # Per TIMELINE_SECONDS of schedule: [start s, answered, 2xx, shed, p50 ms, p99 ms, open
    # connections at its end]: where a run went wrong, if it did.
    timeline: list[list[float]] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.unsent + self.connect_errors + self.resets + self.timeouts + self.garbled


@dataclass
class OverloadRun:
    """One server offered `multiple` of its `capacity` (2xx/s under wrk) in round `round`."""

    server: str
    multiple: float
    capacity: float
    result: Result
    round: int = 0


@dataclass
class Throughput:
    """bench/_throughput.py's run: closed loops (wrk), api against the ceiling."""

    started: datetime
    commit: str  # what was measured: `git describe --always --dirty`
    cores: int
    server_core: str
    load_core: str
    connections: int  # of the scenarios' runs
    seconds: float  # per scenario run
    rounds: int
    curve_seconds: float
    scenarios: list[str]
    curve_connections: list[int]
    variants: list[str]  # servers besides api and ceiling, on the mixed scenario only
    runs: list[Run]  # every reported run, in the order run (warm-ups are not)
    rss_mib: dict[str, list[float]]  # per worker, after the scenarios' runs
    scale_rows: dict[str, int]  # rows in tasks, by database: small, large
    scale_plans: dict[str, list[str]]  # the list query's EXPLAIN ANALYZE, by database


@dataclass
class Overload:
    """bench/_openloop.py's run: each server offered multiples of its own capacity."""

    started: datetime
    commit: str
    server_core: str
    load_core: str
    capacity_rounds: int
    capacity_seconds: float
    multiples: list[float]
    seconds: float  # per open-loop run
    rounds: int
    max_connections: int
    lagging_ms: float  # a run whose send lag p99 is past this is flagged
    capacities: dict[str, float]  # 2xx/s each server was offered multiples of
    capacity_runs: list[Run]
    ceiling: list[Result]  # the generator against a trivial server, rate by rate
    runs: list[OverloadRun]
    notes: list[str]  # what the run saw besides figures (a server that did not settle)


Records = Throughput | Overload


def save(records: Records, path: Path) -> Path:
    """Write `records` to `path`, one run a line (greppable, and a diff shows runs)."""
    document: dict[str, Any] = {"kind": type(records).__name__.lower(), **asdict(records)}
    document["started"] = records.started.isoformat()
    lines = []
    for key, value in document.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"  {json.dumps(item)}" for item in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return path


def load(path: Path) -> Records:
    document = json.loads(path.read_text(encoding="utf-8"))
    kind = document.pop("kind")
    document["started"] = datetime.fromisoformat(document["started"])
    if kind == "throughput":
        document["runs"] = [Run(**run) for run in document["runs"]]
        return Throughput(**document)
    if kind == "overload":
        document["capacity_runs"] = [Run(**run) for run in document["capacity_runs"]]
        document["ceiling"] = [Result(**result) for result in document["ceiling"]]
        document["runs"] = [
            OverloadRun(**{**run, "result": Result(**run["result"])}) for run in document["runs"]
        ]
        return Overload(**document)
    raise ValueError(f"{path}: not a bench record file (kind {kind!r})")
