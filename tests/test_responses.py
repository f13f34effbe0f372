"""Response bodies (backend/responses.py): what a client that never reads can pin in the server.

A real uvicorn process, real sockets that send a request for a large list page and never read
the answer: the server abandons each response after RESPONSE_SEND_TIMEOUT_SECONDS, its memory
comes back, and it answers everyone else throughout. On loopback the kernel would take a whole
512 KiB page into its own buffers (they grow to 4 MB here); the server's sockets get a small send
buffer, as over a real network to a slow client, so what is not taken waits in the server.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import VIA_PGBOUNCER, Database, bearer, uvicorn_process

READERS = 100  # the audit's count
TIMEOUT_SECONDS = 2.0


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


def _stalled_reader(url: str, request: bytes) -> socket.socket:
    """A client that sends its request and never reads: a tiny receive window, never drained."""
    host, port = url.removeprefix("http://").split(":")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect((host, int(port)))
    reader.sendall(request)
    return reader


@pytest.mark.skipif(VIA_PGBOUNCER, reason="about the server's memory, not the database route")
@pytest.mark.quiet  # 100 pages written within a deadline
async def test_unread_pages_are_abandoned_and_their_memory_comes_back(
    direct_database_url: str, db: Database, tmp_path: Path, clean_tables: None
) -> None:
    await db.execute(
        "INSERT INTO users (id) VALUES ('reader');"
        "INSERT INTO tasks (user_id, title, description) SELECT 'reader', 't' || g,"
        " repeat(chr(1), 2000) FROM generate_series(1, 1000) g"  # 13 MB of JSON; 512 KiB a page
    )
    # Every reader gets its page (none is shed): abandonment is what is under test.
    environment = {
        "RESPONSE_SEND_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "ADMISSION_MAX_CONCURRENCY": str(2 * READERS),
    }
    listener = socket.socket()  # closed below
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    headers = bearer("reader")
    request = "\r\n".join(
        ["GET /api/reader/tasks HTTP/1.1", "Host: t", f"Authorization: {headers['Authorization']}"]
    )
    serving = uvicorn_process(direct_database_url, tmp_path, env=environment, listener=listener)
    async with serving as (url, server), httpx.AsyncClient(base_url=url, timeout=5) as client:
        page = await client.get("/api/reader/tasks", headers=headers)  # warm: one read in full
        assert page.status_code == 200
        assert len(page.content) > 450_000
        start = _rss_mib(server.pid)

        readers = [_stalled_reader(url, f"{request}\r\n\r\n".encode()) for _ in range(READERS)]
        try:
            peak, started = start, time.monotonic()
            log = tmp_path / "server.log"
            while log.read_text().count("abandoned") < READERS:
                assert time.monotonic() - started < 30, log.read_text()[-2000:]
                health = await client.get("/healthz")  # everyone else is still served
                assert health.status_code == 200
                peak = max(peak, _rss_mib(server.pid))
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            settled = _rss_mib(server.pid)
            assert (
                await client.get("/api/reader/tasks?limit=1", headers=headers)
            ).status_code == 200
        finally:
            for reader in readers:
                reader.close()
    listener.close()
    assert peak - start <= 150, (start, peak)  # while the pages were being written
    assert settled - start <= 64, (start, settled)  # with the sockets still open
