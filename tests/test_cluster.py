"""`make cluster` (bench/_cluster.py) as a user meets it: it prints its URL, `locust -f bench/`
with every persona (a master and 2 workers) exits 0 against it while one instance is sent
SIGTERM (drains, exits, is started again), and Ctrl-C leaves no process behind.

A minute (the whole topology starts, Locust runs 20 s), so `make e2e` runs it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SECRET, free_port
from tests.haproxy import MISSING, haproxy_binary

LOCUST_SECONDS = 20


def _left_behind(workdir: str) -> list[str]:
    """The running processes whose command line names the cluster's directory (PostgreSQL,
    PgBouncer, HAProxy do), and the directory itself if it still exists."""
    found = [workdir] if Path(workdir).exists() else []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # not a process, or one that just ended
            continue
        if workdir in command:
            found.append(command)
    return found


def _printed(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, text
    return found[1]


async def test_locust_passes_against_the_cluster_and_ctrl_c_stops_all_of_it() -> None:
    if haproxy_binary() is None:
        if os.environ.get("CI"):  # make e2e installs it wherever it can, as in CI
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    environment = {**os.environ, "BETTER_AUTH_SECRET": SECRET, "DRAIN_SECONDS": "2"}
    launcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._cluster",
        "--port",
        str(free_port()),
        cwd=ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
    )
    assert launcher.stdout is not None
    try:
        printed = ""
        async with asyncio.timeout(120):
            while "--host" not in printed:
                line = (await launcher.stdout.readline()).decode()
                assert line, printed
                printed += line
        url = _printed(r"READY: (\S+)", printed)
        workdir = _printed(r"Logs: (\S+)\.", printed)
        pid = int(_printed(r"instances a on :\d+ pid (\d+)", printed))

        command = [sys.executable, "-m", "locust", "-f", "bench/", "--headless", "-u", "24"]
        command += ["-r", "12", "-t", f"{LOCUST_SECONDS}s", "--processes", "2"]
        command += ["--host", url, "--only-summary", "--stop-timeout", "3"]
        locust = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.sleep(5)
        os.kill(pid, signal.SIGTERM)  # a restart under load: it drains, then is replaced
        output, _ = await asyncio.wait_for(locust.communicate(), LOCUST_SECONDS + 60)
        report = output.decode()
        assert locust.returncode == 0, report[-4000:]
        for violation in ("ISOLATION", "EXACTLY-ONCE", "LOST-UPDATE"):
            assert violation not in report

        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = await asyncio.wait_for(launcher.communicate(), 60)
        assert "instance a is back" in printed + rest.decode()
        assert launcher.returncode == 0, rest.decode()
        with pytest.raises(ProcessLookupError):
            os.killpg(launcher.pid, 0)  # nothing of its process group is left
        assert _left_behind(workdir) == []
    finally:
        if launcher.returncode is None:
            launcher.terminate()
            await launcher.wait()
