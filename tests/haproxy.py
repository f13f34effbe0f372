"""A real HAProxy in front of restartable API instances, for the rolling-restart test and for
`make cluster` (bench/_cluster.py).

Configured as a stock balancer is: round robin, a health check of GET /readyz every 500 ms
(down after 2 failures, up after 1 success), and no retries or redispatch, so a request sent to
an instance that refuses it fails, as it would behind most balancers (a Kubernetes Service
included). Its runtime API (a UNIX socket) says how it sees each instance.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import SERVE_CLI, free_port, uvicorn_process

HEALTH_CHECK = "inter 500ms fall 2 rise 1"
# Instances keep idle connections open longer than HAProxy reuses them: with uvicorn's 5 s
# default, an instance can close one just as HAProxy sends a request on it, which then fails.
KEEP_ALIVE = ("--timeout-keep-alive", "75")
MISSING = "haproxy is not installed (apt-get install haproxy, or brew install haproxy)"


def haproxy_binary() -> str | None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    return binary if Path(binary).exists() else None


class HAProxy:
    """Its configuration (written under `workdir`) and its runtime API."""

    def __init__(self, workdir: Path, port: int, servers: Mapping[str, int]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.socket = workdir / "haproxy.sock"
        self.config = workdir / "haproxy.cfg"
        lines = [f"    server {name} 127.0.0.1:{at} check" for name, at in servers.items()]
        self.config.write_text(
            f"""global
    stats socket {self.socket} mode 600 level admin
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A check may take this long (unset, it is `inter`: a busy instance would be taken out).
    timeout check 2s
    retries 0
frontend api
    bind 127.0.0.1:{port}
    default_backend instances
backend instances
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server {HEALTH_CHECK}
"""
            + "\n".join(lines)
            + "\n"
        )

    async def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it: UP, DOWN, `UP 1/2` (going down), ..."""
        reader, writer = await asyncio.open_unix_connection(self.socket)
        try:
            writer.write(b"show stat\n")
            await writer.drain()
            table = (await reader.read()).decode()
        finally:
            writer.close()
        header, *rows = [line for line in table.splitlines() if line]
        columns = header.removeprefix("# ").split(",")
        name, status = columns.index("svname"), columns.index("status")
        cells = [row.split(",") for row in rows]
        return {c[name]: c[status] for c in cells if c[name] not in ("FRONTEND", "BACKEND")}

    async def until_up(self, server: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while (await self.states())[server] != "UP":
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy did not see {server} up within {within:g} s")
            await asyncio.sleep(0.05)


@contextmanager
def running_haproxy(workdir: Path, port: int, servers: Mapping[str, int]) -> Iterator[HAProxy]:
    """HAProxy on 127.0.0.1:`port` in front of `servers` (name -> port on 127.0.0.1), in the
    foreground (`-db`), its output in `workdir`/haproxy.log; stopped after."""
    binary = haproxy_binary()
    if binary is None:
        raise FileNotFoundError(MISSING)
    proxy = HAProxy(workdir, port, servers)
    log = workdir / "haproxy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 (the binary found above, our own config)
            [binary, "-f", str(proxy.config), "-db"], stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 10
        while not proxy.socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield proxy
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Instance:
    """One API instance (`python -m backend serve`, with `env`) on a fixed port, the one
    HAProxy's configuration names; its output in `workdir`/<name><start number>/server.log
    (and HAProxy's log of the requests it could not serve in `workdir`/haproxy.log)."""

    name: str
    database_url: str
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    graceful_seconds: int = 5
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    _starts: Iterator[int] = field(default_factory=itertools.count)

    async def start(self) -> None:
        """Start it; returns once /healthz answers."""
        workdir = self.workdir / f"{self.name}{next(self._starts)}"
        workdir.mkdir(parents=True)
        graceful = ("--timeout-graceful-shutdown", str(self.graceful_seconds))
        serving = uvicorn_process(
            self.database_url,
            workdir,
            *graceful,
            *KEEP_ALIVE,
            cli=SERVE_CLI,
            port=self.port,
            env=self.env,
        )
        _, self.process = await self._stack.enter_async_context(serving)

    async def restart(self, within: float) -> int:
        """SIGTERM, as an orchestrator sends it; once the process has exited (within `within`
        seconds), a new one. The old one's exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(self.process.wait(), within)
        await self.stop()
        await self.start()
        return status

    async def stop(self) -> None:
        """Stop it (SIGTERM: it drains first) unless it has exited already."""
        await self._stack.aclose()
