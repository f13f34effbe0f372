"""`make bench`'s reports, made from its records: Markdown, and charts with matplotlib.

    .venv/bin/python -m bench._render bench/results/<date>.json [bench/results/<date>-overload.json]

Each JSON (bench/_records.py) becomes the .md (and .png) beside it: <date>.md with
<date>-curve.png, <date>-overload.md with <date>-overload.png. `make bench` calls this once it
has written the records; run it again to re-render without re-measuring. Every median a report
shows is taken here, once per group of runs (`_medians`, `_overload_medians`), and the tables and
the charts read the same figures. It must not measure, or start anything.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench._records import Overload, OverloadRun, Records, Run, Throughput, load

OUTLIER = 0.15  # a round this far from its median (req/s) is flagged
API, CEILING = "api", "ceiling"  # the two servers the throughput report sets side by side

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True)
class Medians:
    """The median of each figure over a group of wrk runs."""

    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_request: float


@dataclass(frozen=True)
class OverloadMedians:
    """A server at one multiple of its capacity, over its rounds (RSS peak: the highest)."""

    offered_rate: float
    goodput: float
    ok_p50_ms: float
    ok_p99_ms: float
    shed: float
    shed_p50_ms: float
    errors: float  # anything but 2xx and shed: other statuses too
    rss_peak_mib: float
    rss_end_mib: float
    server_cpu: float


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def _medians(runs: Sequence[Run]) -> Medians:
    return Medians(
        rps=_median(r.rps for r in runs),
        p50_ms=_median(r.p50_ms for r in runs),
        p95_ms=_median(r.p95_ms for r in runs),
        p99_ms=_median(r.p99_ms for r in runs),
        cpu_ms_per_request=_median(r.cpu_ms_per_request for r in runs),
    )


def _overload_medians(runs: Sequence[OverloadRun]) -> OverloadMedians:
    results = [run.result for run in runs]
    return OverloadMedians(
        offered_rate=_median(r.offered_rate for r in results),
        goodput=_median(r.goodput for r in results),
        ok_p50_ms=_median(r.ok_p50_ms for r in results),
        ok_p99_ms=_median(r.ok_p99_ms for r in results),
        shed=_median(r.shed for r in results),
        shed_p50_ms=_median(r.shed_p50_ms for r in results),
        errors=_median(r.errors + sum(r.other_status.values()) for r in results),
        rss_peak_mib=max(r.rss_peak_mib for r in results),
        rss_end_mib=_median(r.rss_end_mib for r in results),
        server_cpu=_median(r.server_cpu for r in results),
    )


def _group(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """`items` by `key`, in the order each key first appears (the order run)."""
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


@dataclass(frozen=True)
class _ThroughputFigures:
    rounds: dict[tuple[str, str], list[Run]]  # (server, scenario): the scenarios' runs
    scenarios: dict[tuple[str, str], Medians]
    curve: dict[tuple[str, int], Medians]  # (server, connections)
    scale: dict[str, Run]  # by database: the round of median p50


def _throughput_figures(records: Throughput) -> _ThroughputFigures:
    parts = _group(records.runs, lambda r: r.part)
    rounds = _group(parts.get("scenarios", []), lambda r: (r.server, r.scenario))
    curve = _group(parts.get("curve", []), lambda r: (r.server, r.connections))
    scale = {}
    for size in records.scale_rows:
        runs = parts[f"scale-{size}"]
        middle = _median(r.p50_ms for r in runs)
        scale[size] = min(runs, key=lambda r: abs(r.p50_ms - middle))
    return _ThroughputFigures(
        rounds=rounds,
        scenarios={key: _medians(runs) for key, runs in rounds.items()},
        curve={key: _medians(runs) for key, runs in curve.items()},
        scale=scale,
    )


def _rounds(runs: list[Run]) -> str:
    middle = _median(r.rps for r in runs)
    return " | ".join(
        f"{r.rps:.0f} req/s, p99 {r.p99_ms:.0f} ms"
        + (" **(outlier)**" if abs(r.rps - middle) > OUTLIER * middle else "")
        for r in runs
    )


def _throughput_markdown(
    records: Throughput, figures: _ThroughputFigures, chart: str | None
) -> str:
    r = records
    lines = [
        f"# Throughput benchmark, started {r.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `make bench` (`.venv/bin/python -m bench._throughput`), at {r.commit}. "
        f"Machine: {r.cores} cores; servers pinned to core {r.server_core}, wrk (1 thread, "
        f"{r.connections} connections) to core {r.load_core}, PostgreSQL unpinned. One uvicorn "
        "worker per server (uvloop, httptools, no access log), pool of 10. PostgreSQL with "
        "synchronous_commit=off (a throwaway database; the API layer is measured, not the disk). "
        f"{r.seconds:.0f} s per run, {r.rounds} rounds alternating api/ceiling per scenario; "
        "medians shown. Each request picks one of 42 users (20 tasks each); creates go to 20 "
        "other users, so lists stay at 20 tasks. Mixed: 50% list, 20% get, 20% toggle, "
        "10% create.",
        "",
        "| scenario | api req/s | ceiling req/s | api / ceiling | api p50 / p95 / p99 ms | "
        "ceiling p50 / p95 / p99 ms | api CPU ms/req | ceiling CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario in r.scenarios:
        a, c = figures.scenarios[API, scenario], figures.scenarios[CEILING, scenario]
        lines.append(
            f"| {scenario} | {a.rps:.0f} | {c.rps:.0f} | **{a.rps / c.rps:.2f}x** | "
            f"{a.p50_ms:.1f} / {a.p95_ms:.1f} / {a.p99_ms:.1f} | "
            f"{c.p50_ms:.1f} / {c.p95_ms:.1f} / {c.p99_ms:.1f} | "
            f"{a.cpu_ms_per_request:.3f} | {c.cpu_ms_per_request:.3f} |"
        )
    non_2xx = sum(run.non_2xx + run.socket_errors for run in r.runs)
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
        "| server | scenario | " + " | ".join(f"round {n + 1}" for n in range(r.rounds)) + " |",
        "|---|---|" + "---|" * r.rounds,
    ]
    servers = dict.fromkeys(server for server, _ in figures.rounds)
    for server in servers:
        for scenario in r.scenarios:
            if runs := figures.rounds.get((server, scenario)):
                lines.append(f"| {server} | {scenario} | {_rounds(runs)} |")
    lines += [
        "",
        "## Variants and earlier commits (mixed workload, same rounds)",
        "",
        "| variant | req/s | vs api | p50 ms | p99 ms | CPU ms/req |",
        "|---|---|---|---|---|---|",
    ]
    api_mixed = figures.scenarios[API, "mixed"].rps
    for server in (API, *r.variants):
        m = figures.scenarios[server, "mixed"]
        lines.append(
            f"| {server} | {m.rps:.0f} | {m.rps / api_mixed:.2f}x | {m.p50_ms:.1f} | "
            f"{m.p99_ms:.1f} | {m.cpu_ms_per_request:.3f} |"
        )
    lines += [
        "",
        "## Saturation curve (mixed workload)",
        "",
        f"{r.curve_seconds:.0f} s per point, {r.rounds} rounds alternating api/ceiling at each "
        "connection count; medians.",
        "",
        "| connections | api req/s | ceiling req/s | ratio | api p50 / p99 ms | "
        "ceiling p50 / p99 ms | api p99 / ceiling p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for connections in r.curve_connections:
        a, c = figures.curve[API, connections], figures.curve[CEILING, connections]
        lines.append(
            f"| {connections} | {a.rps:.0f} | {c.rps:.0f} | {a.rps / c.rps:.2f}x | "
            f"{a.p50_ms:.1f} / {a.p99_ms:.1f} | {c.p50_ms:.1f} / {c.p99_ms:.1f} | "
            f"{a.p99_ms / c.p99_ms:.2f}x |"
        )
    lines += ["", f"![saturation curve]({chart})" if chart else "(matplotlib missing: no chart)"]
    small, large = figures.scale["small"], figures.scale["large"]
    rows_small, rows_large = r.scale_rows["small"], r.scale_rows["large"]
    lines += [
        "",
        "## Scale: list latency with 1,000,000 other users' rows",
        "",
        f"Two databases side by side, one API server on each: {rows_small} rows (50 users x 20 "
        f"tasks) and {rows_large} rows (the same plus 10,000 other users' 1,000,000 rows), both "
        "`VACUUM ANALYZE`d. 8 connections list a random user's 20 tasks; "
        f"{len(_scale_runs(r, 'small'))} rounds alternating between the two, the median round "
        "shown.",
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
        *r.scale_plans["small"],
        "```",
        "Plan at the large size:",
        "```",
        *r.scale_plans["large"],
        "```",
        "",
        "## Memory",
        "",
        *(
            f"- {name}: RSS per worker after the runs: "
            f"{', '.join(f'{mib:.1f} MiB' for mib in values)}"
            for name, values in r.rss_mib.items()
        ),
        "",
        "## Raw runs",
        "",
        f"Every run above, one JSON record a line: [{r.started:%Y-%m-%d}.json]"
        f"({r.started:%Y-%m-%d}.json) (`python -m bench._render` re-renders this page from it).",
        "",
    ]
    return "\n".join(lines)


def _scale_runs(records: Throughput, size: str) -> list[Run]:
    return [run for run in records.runs if run.part == f"scale-{size}"]


def _pyplot() -> Any:  # matplotlib is the bench extra's, untyped here
    """matplotlib's pyplot, headless; None without the bench extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _curve_chart(records: Throughput, figures: _ThroughputFigures, path: Path) -> bool:
    """The saturation curve as a PNG at `path`; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    connections = records.curve_connections
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, colour in ((API, "tab:blue"), (CEILING, "tab:gray")):
        points = [figures.curve[name, c] for c in connections]
        throughput.plot(connections, [p.rps for p in points], "o-", color=colour, label=name)
        latency.plot(
            connections, [p.p99_ms for p in points], "o-", color=colour, label=f"{name} p99"
        )
        latency.plot(
            connections,
            [p.p50_ms for p in points],
            "o--",
            color=colour,
            alpha=0.6,
            label=f"{name} p50",
        )
    for axis in (throughput, latency):
        axis.set_xscale("log", base=2)
        axis.set_xticks(connections, [str(c) for c in connections])
        axis.set_xlabel("concurrent connections (wrk)")
        axis.grid(alpha=0.3)
        axis.legend()
    throughput.set_ylabel("requests/s")
    throughput.set_title("Throughput, mixed workload")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)")
    latency.set_title("Latency: p50 (dashed) and p99")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def summary_line(run: OverloadRun) -> str:
    """One open-loop run on one line: printed as it runs, and listed in the report."""
    r = run.result
    return (
        f"{run.server:24} {run.multiple:3.1f}x {r.offered_rate:7.0f}/s  "
        f"goodput {r.goodput:6.0f} ({r.goodput / run.capacity:4.2f}x)  "
        f"2xx p50 {r.ok_p50_ms:7.1f} p99 {r.ok_p99_ms:8.1f} ms  "
        f"shed {r.shed:6} (p50 {r.shed_p50_ms:5.1f} ms)  errors {r.errors:5} {r.other_status}  "
        f"RSS {r.rss_peak_mib:.0f}/{r.rss_end_mib:.0f} MiB  server CPU {r.server_cpu:.2f}  "
        f"connections {r.peak_connections}  generator lag p99 {r.send_lag_p99_ms:.1f} ms"
    )


def _overload_figures(records: Overload) -> dict[tuple[str, float], OverloadMedians]:
    groups = _group(records.runs, lambda run: (run.server, run.multiple))
    return {key: _overload_medians(runs) for key, runs in groups.items()}


def _overload_markdown(
    records: Overload,
    figures: dict[tuple[str, float], OverloadMedians],
    chart: str | None,
    stem: str,
) -> str:
    r = records
    kept_up = [c for c in r.ceiling if c.goodput >= 0.97 * c.offered_rate and c.errors == 0]
    generator = max((c.goodput for c in kept_up), default=0.0)
    lines = [
        f"# Overload benchmark (open loop), started {r.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `make bench` (`.venv/bin/python -m bench._openloop` alone), at {r.commit}. "
        "Servers as in the throughput report: uvicorn, one worker, pinned to core "
        f"{r.server_core}; the open-loop generator (bench/_openloop.py) pinned to core "
        f"{r.load_core}. Capacity: each server's 2xx/s under wrk's closed loop (mixed, 64 "
        f"connections), the median of {r.capacity_rounds} rounds of {r.capacity_seconds:g} s in "
        f"this run. Then each server is offered {', '.join(f'{m:g}x' for m in r.multiples)} of "
        "its own capacity, Poisson arrivals, the mixed CRUD scenario of 62 users, "
        f"{r.seconds:g} s per run, {r.rounds} round(s) alternating servers; medians shown. "
        "Latency runs from each request's scheduled time (no coordinated omission); goodput "
        "counts 2xx answered within the run's window. Shed: 503 `overloaded` with Retry-After. "
        "Errors: anything else (other statuses, connections refused or reset, requests unsent "
        f"because {r.max_connections:,} connections were busy, 10 s timeouts).",
        "",
        "Capacity: "
        + ", ".join(f"{name} {capacity:,.0f} req/s" for name, capacity in r.capacities.items())
        + f". The generator's own ceiling against a trivial server: {generator:,.0f} req/s "
        "offered and answered on one core (every step in the records).",
        "",
        "| server | offered | req/s | goodput 2xx/s | goodput / capacity | 2xx p50 ms | "
        "2xx p99 ms | shed | shed p50 ms | errors | server RSS peak / end MiB | server CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, capacity in r.capacities.items():
        for multiple in r.multiples:
            m = figures[name, multiple]
            lines.append(
                f"| {name} | {multiple:g}x | {m.offered_rate:,.0f} | {m.goodput:,.0f} | "
                f"{m.goodput / capacity:.2f}x | {m.ok_p50_ms:.1f} | "
                f"{m.ok_p99_ms:.1f} | {m.shed:,.0f} | {m.shed_p50_ms:.1f} | "
                f"{m.errors:,.0f} | {m.rss_peak_mib:.0f} / {m.rss_end_mib:.0f} | "
                f"{m.server_cpu:.2f} |"
            )
    behind = [run for run in r.runs if run.result.send_lag_p99_ms > r.lagging_ms]
    lines += [
        "",
        "Server CPU: the share of its core the server used during the window; well under 1.0 "
        "at or past capacity means it was starved (a neighbour on its core) or waiting on the "
        "database, not busy.",
    ]
    if behind:
        lines.append(
            f"The generator fell behind its schedule (send lag p99 over {r.lagging_ms:g} ms) in "
            f"{len(behind)} of {len(r.runs)} runs: "
            + ", ".join(f"{run.server} {run.multiple:g}x" for run in behind)
            + "; their latencies include that lag (see every run below)."
        )
    lines += [
        *(f"Note: {note}." for note in r.notes),
        "",
        f"![goodput and p99 against offered load]({chart})" if chart else "(no chart)",
        "",
        "## Every run",
        "",
        "```",
        *(summary_line(run) for run in r.runs),
        "```",
        "",
        f"Raw records (every run's full JSON, one a line): [{stem}.json]({stem}.json).",
        "",
    ]
    return "\n".join(lines)


def _overload_chart(
    records: Overload, figures: dict[tuple[str, float], OverloadMedians], path: Path
) -> bool:
    """Goodput and 2xx p99 against offered load, one line per server; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    multiples = records.multiples
    figure, (goodput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, capacity in records.capacities.items():
        points = [figures[name, multiple] for multiple in multiples]
        goodput.plot(multiples, [p.goodput / capacity for p in points], "o-", label=name)
        latency.plot(multiples, [p.ok_p99_ms for p in points], "o-", label=f"{name} p99")
    goodput.plot(multiples, [min(m, 1.0) for m in multiples], ":", color="gray", label="ideal")
    goodput.set_ylabel("goodput / capacity (2xx)")
    goodput.set_title("Goodput, open loop, mixed workload")
    latency.set_yscale("log")
    latency.set_ylabel("2xx p99, ms (log)")
    latency.set_title("2xx p99 from scheduled time")
    for axis in (goodput, latency):
        axis.set_xlabel("offered load / capacity")
        axis.set_xticks(multiples, [f"{m:g}x" for m in multiples])
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def render(path: Path) -> list[Path]:
    """The report (and chart) of the records at `path`, written beside it; the files written."""
    records: Records = load(path)
    report = path.with_suffix(".md")
    if isinstance(records, Throughput):
        figures = _throughput_figures(records)
        chart = path.with_name(f"{path.stem}-curve.png")
        drawn = _curve_chart(records, figures, chart)
        markdown = _throughput_markdown(records, figures, chart.name if drawn else None)
    else:
        overload = _overload_figures(records)
        chart = path.with_suffix(".png")
        drawn = _overload_chart(records, overload, chart)
        markdown = _overload_markdown(records, overload, chart.name if drawn else None, path.stem)
    report.write_text(markdown, encoding="utf-8")
    return [report, chart] if drawn else [report]


def main(argv: Sequence[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m bench._render bench/results/<date>.json ...")
    for name in argv:
        for written in render(Path(name)):
            print(f"wrote {written}")


if __name__ == "__main__":
    main(sys.argv[1:])
