"""Logging as a user meets it: the app served by the uvicorn CLI the way the Makefile does.

uvicorn's own switches must hold (`--no-access-log` means no access lines), `--access-log`
brings the lines back in our format with the request id, and LOG_LEVEL governs uvicorn's
loggers too. The database is reached directly: what is logged does not depend on the route.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, free_port, make_dry_run

MAKEFILE_SERVE_FLAGS = ("-m backend serve", "--no-access-log", "--timeout-graceful-shutdown")


def _serve(database_url: str, tmp_path: Path, *flags: str, **env: str) -> str:
    """Serve, send three requests (X-Request-ID trace-1..3), stop; what the server wrote."""
    port = free_port()
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), *flags]
    environment = {**os.environ, "DATABASE_URL": database_url, "BETTER_AUTH_SECRET": SECRET}
    with log.open("wb") as output:
        server = subprocess.Popen(  # noqa: S603
            command, cwd=tmp_path, env={**environment, **env}, stdout=output, stderr=output
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{url}/healthz", headers={"X-Request-ID": "probe"})
                    break
                except httpx.TransportError:
                    assert server.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.1)
            for n in (1, 2, 3):
                httpx.get(f"{url}/healthz", headers={"X-Request-ID": f"trace-{n}"})
        finally:
            server.terminate()
            server.wait(timeout=30)
    return log.read_text()


@pytest.mark.parametrize("target", ["serve", "run"])
def test_the_makefile_serves_without_access_log(target: str) -> None:
    recipe = make_dry_run(target)
    for flag in MAKEFILE_SERVE_FLAGS:
        assert flag in recipe


def test_no_access_log_means_no_access_lines(direct_database_url: str, tmp_path: Path) -> None:
    output = _serve(
        direct_database_url, tmp_path, "--no-access-log", "--timeout-graceful-shutdown", "20"
    )
    assert "Application startup complete" in output  # the server did log, at INFO
    assert "GET /healthz" not in output
    assert "uvicorn.access" not in output


def test_access_log_opt_in_uses_our_format_with_the_request_id(
    direct_database_url: str, tmp_path: Path
) -> None:
    output = _serve(direct_database_url, tmp_path, "--access-log")
    lines = [line for line in output.splitlines() if "GET /healthz" in line]
    assert len(lines) == 4, output
    pattern = r"\S+ \S+ INFO    uvicorn\.access \[trace-2\] 127\.0\.0\.1:\d+ - \"GET /healthz"
    assert any(re.match(pattern, line) for line in lines), lines


@pytest.mark.parametrize("level", ["WARNING", "warning"])
def test_log_level_governs_uvicorn_too(
    direct_database_url: str, tmp_path: Path, level: str
) -> None:
    output = _serve(direct_database_url, tmp_path, "--access-log", LOG_LEVEL=level)
    assert "Application startup complete" not in output, output  # uvicorn's INFO
    assert "GET /healthz" not in output
    assert "Traceback" not in output
