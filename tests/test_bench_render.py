"""`make bench`'s reports are rendered from its JSON records (bench/_render.py) as they were
written before: the same headings and tables as the committed 2026-12-02 reports, and each row
the median of its rounds.

The records here are synthetic, hand-written so that every median is a round's own figure
(three rounds: the middle one) and every row can be read off by eye. No figure here was
measured.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench._records import Overload, OverloadRun, Result, Run, Throughput, load, save
from bench._render import main, render
from tests.conftest import ROOT

STARTED = datetime(2026, 12, 2, 0, 58, tzinfo=UTC)
SECONDS = 10.0
Figures = tuple[float, float, float, float, float]  # req/s, p50, p95, p99 ms, CPU ms/req


def _run(
    server: str,
    part: str,
    n: int,
    figures: Figures,
    scenario: str = "mixed",
    connections: int = 64,
    non_2xx: int = 0,
    socket_errors: int = 0,
) -> Run:
    rps, p50, p95, p99, cpu = figures
    return Run(
        server=server,
        scenario=scenario,
        connections=connections,
        requests=round(rps * SECONDS) + non_2xx,  # refusals are not throughput
        seconds=SECONDS,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        non_2xx=non_2xx,
        socket_errors=socket_errors,
        cpu_ms_per_request=cpu,
        part=part,
        round=n,
    )


# (server, scenario): each round's figures. Synthetic.
SCENARIO_ROUNDS: dict[tuple[str, str], list[Figures]] = {
    ("api", "list"): [(1100, 40, 60, 80, 0.7), (1200, 30, 50, 70, 0.6), (2000, 20, 30, 40, 0.5)],
    ("ceiling", "list"): [
        (2000, 12, 25, 110, 0.35),
        (2400, 10, 20, 100, 0.3),
        (2500, 9, 18, 90, 0.25),
    ],
    ("api", "mixed"): [
        (1400, 35, 55, 75, 0.65),
        (1500, 35, 55, 75, 0.65),
        (1600, 35, 55, 75, 0.65),
    ],
    ("ceiling", "mixed"): [
        (2900, 15, 30, 120, 0.4),
        (3000, 15, 30, 120, 0.4),
        (3100, 15, 30, 120, 0.4),
    ],
    ("api, variant", "mixed"): [
        (1650, 30, 45, 60, 0.55),
        (1800, 30, 45, 60, 0.55),
        (1950, 30, 45, 60, 0.55),
    ],
}
# (server, connections): each round's figures (p95 unused by the curve). Synthetic.
CURVE_ROUNDS: dict[tuple[str, int], list[Figures]] = {
    ("api", 8): [(900, 4, 6, 8, 0.5), (1000, 4, 6, 8, 0.5), (1100, 4, 6, 8, 0.5)],
    ("ceiling", 8): [(1900, 2, 3, 4, 0.3), (2000, 2, 3, 4, 0.3), (2100, 2, 3, 4, 0.3)],
    ("api", 64): [(1300, 40, 50, 60, 0.6), (1400, 40, 50, 60, 0.6), (1500, 40, 50, 60, 0.6)],
    ("ceiling", 64): [(2700, 20, 90, 240, 0.4), (2800, 20, 90, 240, 0.4), (2900, 20, 90, 240, 0.4)],
}
# by database: each round's figures; the round of median p50 is reported. Synthetic.
SCALE_ROUNDS: dict[str, list[Figures]] = {
    "small": [(2000, 3.0, 5, 6.0, 0.5), (1900, 3.5, 5, 7.0, 0.5), (1800, 4.0, 5, 8.0, 0.5)],
    "large": [(1700, 4.2, 6, 8.4, 0.5), (1500, 5.6, 6, 11.2, 0.5), (1600, 4.9, 6, 9.8, 0.5)],
}


def _throughput() -> Throughput:
    runs = []
    for n in range(3):  # in the order make bench runs them: scenario by scenario, alternating
        for scenario in ("list", "mixed"):
            for server in ("api", "ceiling"):
                figures = SCENARIO_ROUNDS[server, scenario][n]
                runs.append(_run(server, "scenarios", n + 1, figures, scenario))
        runs.append(
            _run("api, variant", "scenarios", n + 1, SCENARIO_ROUNDS["api, variant", "mixed"][n])
        )
    for n in range(3):
        for connections in (8, 64):
            for server in ("api", "ceiling"):
                figures = CURVE_ROUNDS[server, connections][n]
                refused = 500 if (server, connections, n) == ("api", 64, 1) else 0
                runs.append(
                    _run(server, "curve", n + 1, figures, connections=connections, non_2xx=refused)
                )
    for n in range(3):
        for size in ("small", "large"):
            errors = 2 if (size, n) == ("large", 0) else 0
            figures = SCALE_ROUNDS[size][n]
            runs.append(
                _run("api", f"scale-{size}", n + 1, figures, "list", 8, socket_errors=errors)
            )
    return Throughput(
        started=STARTED,
        commit="abc1234",
        cores=2,
        server_core="0",
        load_core="1",
        connections=64,
        seconds=SECONDS,
        rounds=3,
        curve_seconds=6.0,
        scenarios=["list", "mixed"],
        curve_connections=[8, 64],
        variants=["api, variant"],
        runs=runs,
        rss_mib={"api": [98.4], "ceiling": [53.4, 50.0]},
        scale_rows={"small": 1000, "large": 1001000},
        scale_plans={"small": ["Limit (small plan)"], "large": ["Limit (large plan)"]},
    )


def _result(offered: float, goodput: float, ok_p99_ms: float, **figures: float) -> Result:
    defaults: dict[str, float] = {
        "shed": 0,
        "shed_p50_ms": 0.0,
        "timeouts": 0,
        "send_lag_p99_ms": 2.0,
        "rss_peak_mib": 115.0,
    }
    f = {**defaults, **figures}
    return Result(
        offered_rate=offered,
        seconds=SECONDS,
        scheduled=round(offered * SECONDS),
        sent=round(offered * SECONDS),
        ok=round(goodput * SECONDS),
        goodput=goodput,
        ok_p50_ms=35.0,
        ok_p99_ms=ok_p99_ms,
        shed=int(f["shed"]),
        shed_p50_ms=f["shed_p50_ms"],
        shed_p99_ms=f["shed_p50_ms"] * 2,
        other_status={},
        unsent=0,
        connect_errors=0,
        resets=0,
        garbled=0,
        timeouts=int(f["timeouts"]),
        peak_connections=64,
        send_lag_p99_ms=f["send_lag_p99_ms"],
        generator_cpu=0.5,
        rss_peak_mib=f["rss_peak_mib"],
        rss_end_mib=111.0,
        server_cpu=0.92,
    )


def _overload() -> Overload:
    capacities = {"api": 1000.0, "ceiling": 2000.0}
    # (server, multiple): each round's result. Synthetic.
    rounds = {
        ("api", 1.0): [
            _result(1000, 900, 100, shed=50, shed_p50_ms=1.7),
            _result(1000, 950, 130, shed=50, shed_p50_ms=1.7),
            _result(1000, 980, 120, shed=50, shed_p50_ms=1.7),
        ],
        ("api", 2.0): [
            _result(2000, 700, 200, shed=1200, shed_p50_ms=1.7, timeouts=0, rss_peak_mib=115),
            _result(2000, 800, 300, shed=1200, shed_p50_ms=1.7, timeouts=10, rss_peak_mib=120),
            _result(2000, 750, 250, shed=1200, shed_p50_ms=1.7, timeouts=20, rss_peak_mib=118),
        ],
        ("ceiling", 1.0): [
            _result(2000, 1500, 5000, timeouts=100),
            _result(2000, 1600, 6000, timeouts=200),
            _result(2000, 1700, 7000, timeouts=300),
        ],
        ("ceiling", 2.0): [
            _result(4000, 1200, 9000, timeouts=2000),
            _result(4000, 1300, 9500, timeouts=2100, send_lag_p99_ms=80.0),
            _result(4000, 1400, 9900, timeouts=2200),
        ],
    }
    runs = [
        OverloadRun(server, multiple, capacities[server], rounds[server, multiple][n], n + 1)
        for n in range(3)
        for multiple in (1.0, 2.0)
        for server in capacities
    ]
    return Overload(
        started=datetime(2026, 12, 2, 1, 23, tzinfo=UTC),
        commit="abc1234",
        server_core="0",
        load_core="1",
        capacity_rounds=3,
        capacity_seconds=5.0,
        multiples=[1.0, 2.0],
        seconds=SECONDS,
        rounds=3,
        max_connections=4096,
        lagging_ms=50.0,
        capacities=capacities,
        capacity_runs=[_run("api", "capacity", 1, (1000, 40, 50, 60, 0.6))],
        ceiling=[_result(8000, 7998, 0.7), _result(16000, 15000, 9.0)],  # the second fell behind
        runs=runs,
        notes=["ceiling still busy 30 s after its last run"],
    )


def _table_shape(markdown: str) -> list[str]:
    """The headings and every table's header row: what a report's reader navigates by (not the
    title, which carries the run's own start time)."""
    lines = markdown.splitlines()
    return [
        line
        for n, line in enumerate(lines)
        if line.startswith("##") or (line.startswith("| ") and lines[n + 1].startswith("|---"))
    ]


def _rendered(tmp_path: Path, records: Throughput | Overload, name: str) -> str:
    path = save(records, tmp_path / name)
    assert load(path) == records  # the JSON keeps every field
    written = render(path)
    assert written[0] == path.with_suffix(".md")
    return written[0].read_text(encoding="utf-8")


def test_throughput_report_has_todays_shape_and_the_median_of_each_round(tmp_path: Path) -> None:
    markdown = _rendered(tmp_path, _throughput(), "2026-12-02.json")
    lines = markdown.splitlines()
    today = (ROOT / "bench/results/2026-12-02.md").read_text(encoding="utf-8")
    # Today's report has five rounds; these records have three.
    shape = [line.replace(" round 4 | round 5 |", "") for line in _table_shape(today)]
    assert _table_shape(markdown) == shape
    for row in [
        "| list | 1200 | 2400 | **0.50x** | 30.0 / 50.0 / 70.0 | 10.0 / 20.0 / 100.0 | 0.600 | "
        "0.300 |",
        "| mixed | 1500 | 3000 | **0.50x** | 35.0 / 55.0 / 75.0 | 15.0 / 30.0 / 120.0 | "
        "0.650 | 0.400 |",
        "| api | list | 1100 req/s, p99 80 ms | 1200 req/s, p99 70 ms | "
        "2000 req/s, p99 40 ms **(outlier)** |",
        "| ceiling | mixed | 2900 req/s, p99 120 ms | 3000 req/s, p99 120 ms | "
        "3100 req/s, p99 120 ms |",
        "| api, variant | mixed | 1650 req/s, p99 60 ms | 1800 req/s, p99 60 ms | "
        "1950 req/s, p99 60 ms |",
        "| api | 1500 | 1.00x | 35.0 | 75.0 | 0.650 |",
        "| api, variant | 1800 | 1.20x | 30.0 | 60.0 | 0.550 |",
        "| 8 | 1000 | 2000 | 0.50x | 4.0 / 8.0 | 2.0 / 4.0 | 2.00x |",
        "| 64 | 1400 | 2800 | 0.50x | 40.0 / 60.0 | 20.0 / 240.0 | 0.25x |",
        "| 1000 | 1900 | 3.50 | 7.00 |",
        "| 1001000 | 1600 | 4.90 | 9.80 |",
        "p50 ratio large/small: **1.40x**, p99 ratio: 1.40x.",
        "Non-2xx responses and socket errors over all runs: 502.",
        "- ceiling: RSS per worker after the runs: 53.4 MiB, 50.0 MiB",
    ]:
        assert row in lines, row
    # Every round of each server and scenario, in the order the servers first ran.
    every_round = [line.split(" | ")[:2] for line in lines if "req/s, p99" in line]
    assert every_round == [
        ["| api", "list"],
        ["| api", "mixed"],
        ["| ceiling", "list"],
        ["| ceiling", "mixed"],
        ["| api, variant", "mixed"],
    ]


def test_overload_report_has_todays_shape_and_the_median_of_each_round(tmp_path: Path) -> None:
    markdown = _rendered(tmp_path, _overload(), "2026-12-02-overload.json")
    lines = markdown.splitlines()
    today = (ROOT / "bench/results/2026-12-02-overload.md").read_text(encoding="utf-8")
    assert _table_shape(markdown) == _table_shape(today)
    rows = [line for line in lines if line.startswith(("| api |", "| ceiling |"))]
    assert rows == [
        "| api | 1x | 1,000 | 950 | 0.95x | 35.0 | 120.0 | 50 | 1.7 | 0 | 115 / 111 | 0.92 |",
        "| api | 2x | 2,000 | 750 | 0.75x | 35.0 | 250.0 | 1,200 | 1.7 | 10 | 120 / 111 | 0.92 |",
        "| ceiling | 1x | 2,000 | 1,600 | 0.80x | 35.0 | 6000.0 | 0 | 0.0 | 200 | 115 / 111 | "
        "0.92 |",
        "| ceiling | 2x | 4,000 | 1,300 | 0.65x | 35.0 | 9500.0 | 0 | 0.0 | 2,100 | "
        "115 / 111 | 0.92 |",
    ]
    assert (
        "Capacity: api 1,000 req/s, ceiling 2,000 req/s. The generator's own ceiling " in markdown
    )
    assert "trivial server: 7,998 req/s offered" in markdown  # 16,000/s was not kept up with
    assert (
        "The generator fell behind its schedule (send lag p99 over 50 ms) in 1 of 12 runs: "
        "ceiling 2x;"
    ) in markdown
    assert "Note: ceiling still busy 30 s after its last run." in lines
    assert sum(1 for line in lines if "goodput" in line and "generator lag p99" in line) == 12
    assert "[2026-12-02-overload.json](2026-12-02-overload.json)" in markdown


def test_render_command_rerenders_a_records_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(_overload(), tmp_path / "2026-12-02-overload.json")
    main([str(path)])
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {path.with_suffix('.md')}"
    with pytest.raises(SystemExit, match="usage"):
        main([])
