"""`make cluster`: the many-instance topology on one machine, to load with Locust and to watch.

    .venv/bin/python -m bench._cluster [--port 8000]

HAProxy on 127.0.0.1:PORT (tests/haproxy.py: /readyz checked every 500 ms, no retries) in front
of two instances of `python -m backend serve`, draining on SIGTERM (DRAIN_SECONDS, default
10 s), which reach PostgreSQL through PgBouncer in transaction mode (statement cache off), as
behind Neon's pooler. PostgreSQL is an embedded, throwaway one, migrated at start and deleted
at the end. An instance that exits (`kill -TERM <pid>`: a drain) is started again, as an
orchestrator would, so a rolling restart can be done by hand under load. It prints the URL and
the Locust command; Ctrl-C (or SIGTERM) stops all of it.

It lives in bench/ because `locust -f bench/` is what it is for (the leading underscore keeps
Locust from importing it), and it starts each part with the test suite's own launchers
(tests/conftest.py, tests/haproxy.py): the topology that is loaded here is the tested one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import tempfile
from pathlib import Path

from backend.config import get_settings
from backend.db import EmbeddedPostgres
from tests.conftest import run_alembic, run_pgbouncer
from tests.haproxy import Instance, running_haproxy

INSTANCES = ("a", "b")
GRACEFUL_SECONDS = 15  # as in the production command


def _secret() -> str:
    """The developer's (environment, else .env), so `make token` tokens work here too."""
    configured = get_settings().better_auth_secret
    return configured.get_secret_value() if configured else secrets.token_urlsafe(48)


async def _serve(port: int, workdir: Path) -> None:
    secret = _secret()
    postgres = EmbeddedPostgres(workdir / "postgres" / "data", delete_on_stop=True)
    try:
        await asyncio.to_thread(run_alembic, postgres.url(), "upgrade", "head")
        pooler = workdir / "pgbouncer"
        pooler.mkdir()
        async with contextlib.AsyncExitStack() as stack:
            pooled = stack.enter_context(contextlib.contextmanager(run_pgbouncer)(postgres, pooler))
            environment = {"BETTER_AUTH_SECRET": secret, "DB_STATEMENT_CACHE": "false"}
            instances = [
                Instance(name, pooled, workdir, environment, GRACEFUL_SECONDS) for name in INSTANCES
            ]
            for instance in instances:
                stack.push_async_callback(instance.stop)
                stack.push_async_callback(_no_drain, instance)
            await asyncio.gather(*(instance.start() for instance in instances))
            servers = {instance.name: instance.port for instance in instances}
            proxy = stack.enter_context(running_haproxy(workdir, port, servers))
            for instance in instances:
                await proxy.until_up(instance.name)
            _announce(proxy.url, secret, instances, workdir)
            while True:  # until cancelled: Ctrl-C or SIGTERM
                for instance in instances:
                    assert instance.process is not None
                    if instance.process.returncode is not None:
                        print(f"instance {instance.name} exited: starting it again", flush=True)
                        await instance.stop()
                        await instance.start()
                        print(f"instance {instance.name} is back: pid {instance.process.pid}")
                await asyncio.sleep(0.5)
    finally:
        postgres.stop()


async def _no_drain(instance: Instance) -> None:
    """The whole cluster is stopping: nothing is left to drain to. SIGINT now and the SIGTERM
    of `instance.stop()` are two signals, and a second one ends the drain at once."""
    if instance.process is not None and instance.process.returncode is None:
        instance.process.send_signal(signal.SIGINT)


def _announce(url: str, secret: str, instances: list[Instance], workdir: Path) -> None:
    pids = ", ".join(f"{i.name} on :{i.port} pid {i.process.pid}" for i in instances if i.process)
    print(
        f"""
READY: {url}  (HAProxy -> instances {pids} -> PgBouncer -> PostgreSQL)
Logs: {workdir}. `kill -TERM <pid>` drains and restarts one instance. Ctrl-C stops all.
Load it from another shell:
  BETTER_AUTH_SECRET='{secret}' .venv/bin/locust -f bench/ --headless -u 50 -r 10 -t 30s \\
      --processes 2 --host {url}
""",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._cluster", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    port = parser.parse_args().port
    with tempfile.TemporaryDirectory(prefix="todo-cluster-") as workdir:

        async def serving() -> None:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            await _serve(port, Path(workdir))

        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(serving())
    print("cluster stopped", flush=True)


if __name__ == "__main__":
    main()
