"""`make e2e`: the image the Containerfile builds, migrated as a release step and run against the
test PostgreSQL: a CRUD round trip with a token, its process not root, its HEALTHCHECK passing,
SIGTERM ending it cleanly. Minutes (a podman build), so it is not part of `make test`.

`CONTAINER_BASE_IMAGE` (empty: the Containerfile's default, the official Python image) is the
base; `make e2e` sets it to `localhost/debian-python:bookworm`, which it makes from Debian
packages where registries of images are unreachable (CI), along with podman's settings there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from backend.db import EmbeddedPostgres
from tests.conftest import ROOT, SECRET, FreshDatabase, bearer

IMAGE = "localhost/todo-api:e2e"
BASE_IMAGE = os.environ.get("CONTAINER_BASE_IMAGE", "")
BUILD_SECONDS = 900


async def podman(*args: str, within: float = 120) -> str:
    """`podman ARGS`, killed after `within` seconds; its stdout, or a failure with its stderr."""
    process = await asyncio.create_subprocess_exec(
        "podman", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    command = " ".join(args)
    failed = f"podman {command} exited {process.returncode}:\n{out.decode()}{err.decode()}"
    assert process.returncode == 0, failed
    return out.decode()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):  # make e2e installs podman and makes the base wherever it can
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
async def image() -> str:
    """The image, built from the working tree (layers cached by podman between runs)."""
    if shutil.which("podman") is None:
        _unavailable("podman is not installed (make e2e installs it where apt-get can)")
    if BASE_IMAGE.startswith("localhost/"):
        exists = await asyncio.create_subprocess_exec("podman", "image", "exists", BASE_IMAGE)
        if await exists.wait() != 0:
            _unavailable(f"no {BASE_IMAGE}: make container-base makes it from Debian packages")
    # A plain build gets the uv `make install` uses (make image passes it; this build does not).
    uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert uv is not None
    assert f"ARG UV_VERSION={uv[1]}\n" in (ROOT / "Containerfile").read_text()
    build = ["build", "--format", "docker", "--network", "host", "-t", IMAGE, "-f", "Containerfile"]
    if BASE_IMAGE:
        build += ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    # This machine may reach PyPI through a certificate authority of its own: RUN steps see its
    # bundle in place of the image's (build-time only: the image keeps its own).
    if ca := os.environ.get("SSL_CERT_FILE"):
        build += ["--volume", f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro"]
    await podman(*build, str(ROOT), within=BUILD_SECONDS)
    return IMAGE


@pytest.fixture
async def tcp_postgres(postgres: EmbeddedPostgres) -> AsyncIterator[int]:
    """A loopback TCP port relayed to the test server's Unix socket: the embedded server listens
    on no TCP port, and its socket directory is private to its own user, not the container's."""
    socket_path = postgres.socket_dir / f".s.PGSQL.{postgres.port}"

    async def relay(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        server_reader, server = await asyncio.open_unix_connection(socket_path)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pipe(client_reader, server), pipe(server_reader, client))

    listener = await asyncio.start_server(relay, "127.0.0.1", 0)
    async with listener:
        yield listener.sockets[0].getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _ready(url: str, container: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            if asyncio.get_running_loop().time() > deadline:
                logs = await podman("logs", container)
                pytest.fail(f"the container did not get ready in 60 s:\n{logs}")
            await asyncio.sleep(0.2)


async def _tables(database_url: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}
    finally:
        await connection.close()


async def test_the_image_serves_tasks_as_a_non_root_user_once_its_release_step_migrated(
    image: str, tcp_postgres: int, new_database: FreshDatabase
) -> None:
    database = urlsplit(await new_database()).path.lstrip("/")
    database_url = f"postgresql://postgres@127.0.0.1:{tcp_postgres}/{database}"
    run = ["run", "--network", "host", "-e", f"DATABASE_URL={database_url}"]

    # Only the virtual environment and the code are in the image (no .env, no tests).
    listing = await podman("run", "--rm", image, "ls", "-A", "/app")
    assert listing.split() == [".venv", "backend", "pyproject.toml"]

    port = _free_port()
    env = ["-e", f"BETTER_AUTH_SECRET={SECRET}", "-e", f"UVICORN_PORT={port}"]
    container = (await podman(*run, "-d", *env, image)).strip()
    try:
        url = f"http://127.0.0.1:{port}"
        await _ready(url, container)
        assert await _tables(database_url) == set()  # starting never migrates

        status = await podman("exec", container, "cat", "/proc/1/status")
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert "0" not in uids  # real, effective, saved, filesystem: the server's own process

        await podman("healthcheck", "run", container)  # exits non-zero when the check fails

        # The release step: a one-off container of the same image.
        await podman(*run, "--rm", image, "alembic", "upgrade", "head", within=180)
        assert "alembic_version" in await _tables(database_url)

        alice = bearer("alice")
        async with httpx.AsyncClient(base_url=f"{url}/api/alice", headers=alice) as api:
            created = await api.post("/tasks", json={"title": "ship the image"})
            assert created.status_code == 201
            task = created.json()
            assert (task["title"], task["completed"]) == ("ship the image", False)
            listed = await api.get("/tasks")
            assert (listed.status_code, [t["id"] for t in listed.json()]) == (200, [task["id"]])
            toggled = await api.patch(f"/tasks/{task['id']}/complete")
            assert (toggled.status_code, toggled.json()["completed"]) == (200, True)
            assert (await api.delete(f"/tasks/{task['id']}")).status_code == 204
            gone = await api.get(f"/tasks/{task['id']}")
            assert (gone.status_code, gone.json()["code"]) == (404, "task_not_found")

        # SIGTERM (podman stop) reaches uvicorn as PID 1: it drains and exits 0, not killed.
        await podman("stop", "--time", "30", container, within=60)
        exit_code = await podman("inspect", "--format", "{{.State.ExitCode}}", container)
        assert exit_code.strip() == "0"
    finally:
        await podman("rm", "--force", container)
