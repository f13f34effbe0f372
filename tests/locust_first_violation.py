"""Loaded beside bench/ by tests/test_bench_isolation.py (`locust -f bench/,<this file>`): the
run ends at the first violation bench/locustfile.py reports (of the kind STOP_AT_VIOLATION
names, when set: a planted bug may trip other checks first), instead of running out its time.

It adds one listener and no users; what bench/ checks and how it sets the exit code stay its own.
It must not import bench/locustfile.py: a second copy would register bench's listeners twice.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
from locust import events
from locust.env import Environment

# The kinds bench/locustfile.py's report_violation names its failures by (their request_type).
VIOLATIONS = frozenset({"ISOLATION", "EXACTLY-ONCE", "LOST-UPDATE"})
STOP_AT = frozenset(os.environ.get("STOP_AT_VIOLATION", "").split()) or VIOLATIONS

_runs: list[Environment] = []


def _remember(environment: Environment, **_: Any) -> None:
    _runs.append(environment)


def _quit_at_a_violation(
    request_type: str = "", exception: BaseException | None = None, **_: Any
) -> None:
    if exception is None or request_type not in STOP_AT:
        return
    for environment in _runs:
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)  # not from a user's greenlet, which quit kills
    _runs.clear()  # once


events.init.add_listener(_remember)  # type: ignore[no-untyped-call]
events.request.add_listener(_quit_at_a_violation)  # type: ignore[no-untyped-call]
