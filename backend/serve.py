"""`python -m backend serve [uvicorn options]`: the API under uvicorn, draining on SIGTERM.

uvicorn closes its listener the moment SIGTERM arrives, before any load balancer has seen the
instance go: requests routed to it in the next second are refused. Here the first SIGTERM (or
SIGINT) only starts a drain: `/readyz` answers 503 `draining` at once, every response carries
`Connection: close` (clients and balancers reconnect, to another instance), and the instance
keeps serving for DRAIN_SECONDS. Then uvicorn's own shutdown runs: the listener closes and
in-flight requests finish within `--timeout-graceful-shutdown`. A second signal ends the drain
at once. DRAIN_SECONDS=0 is uvicorn's behaviour exactly.

`--migrate` (ours, for `make run`) applies the migrations first, in this process
(backend/migrate.py); the production command leaves it out, migrations being a release step.

The options are uvicorn's CLI, unchanged (`UVICORN_*` variables, `--workers`, `--fd`, ...); the
app is always backend.main:create_app. This module must not change how requests are served:
it only decides when the server stops taking them. It imports little: every worker of
`--workers N` imports it before it can answer its supervisor's health pings.
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

APP = "backend.main:create_app"
DRAINING = "draining"  # the lifespan-state key that tells the app (backend/routes/health.py)
_CONNECTION_CLOSE = (b"connection", b"close")

logger = logging.getLogger("uvicorn.error")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which drains for `drain_seconds` (DRAIN_SECONDS by default) before it
    stops. The app learns of the drain through the lifespan state (`DRAINING`), which uvicorn
    copies into every request's scope."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float | None = None) -> None:
        super().__init__(config)
        if drain_seconds is None:
            drain_seconds = _drain_seconds()
        self.drain_seconds = drain_seconds
        self.drain_ends_at: float | None = None
        self._drain_announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags (no logging, no awaiting); on_tick acts on them.
        if self.drain_ends_at is not None and not self.should_exit:
            self.should_exit = True  # a second signal: stop draining, shut down now
        elif self.drain_ends_at is None and self.started and self.drain_seconds > 0:
            self.drain_ends_at = time.monotonic() + self.drain_seconds
            self.lifespan.state[DRAINING] = True
            # uvicorn adds these headers to every response it starts from now on.
            self.config.encoded_headers = [*self.config.encoded_headers, _CONNECTION_CLOSE]
            self.server_state.default_headers = [
                *self.server_state.default_headers,
                _CONNECTION_CLOSE,
            ]
        else:  # still starting (not in any rotation yet), drain off, or a third signal
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_ends_at is not None:
            if not self._drain_announced:
                self._drain_announced = True
                logger.info(
                    "Draining: /readyz answers 503 for %g s while requests are still served",
                    self.drain_seconds,
                )
            if not self.should_exit and time.monotonic() >= self.drain_ends_at:
                self.should_exit = True
        return await super().on_tick(counter)


class DrainingWorker(multiprocess.Process):
    """A worker of `--workers N` whose server drains: the supervisor forwards SIGTERM to each
    worker, and each drains on its own clock (they all started at the same signal). Built in
    the supervisor, which reads the setting, and sent to the worker process by pickle."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.drain_seconds = _drain_seconds()
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(self.config, self.drain_seconds)
        return self._server


def _drain_seconds() -> float:
    from backend.config import get_settings  # pydantic: not in a worker's first imports

    return get_settings().drain_seconds


MIGRATE = "--migrate"
_PRINT_AND_EXIT = frozenset({"--help", "--version"})  # uvicorn's options that print and exit


def main(args: Sequence[str]) -> None:
    """Run uvicorn's own CLI on the app with `args`, its server and workers draining; with
    `--migrate` among them, after applying the migrations."""
    _drain_seconds()  # a bad DRAIN_SECONDS (or any setting) stops here, before a port is bound
    uvicorn_args = [arg for arg in args if arg != MIGRATE]
    if MIGRATE in args and _PRINT_AND_EXIT.isdisjoint(args):  # --help migrates nothing
        from backend.config import get_settings
        from backend.logs import configure_logging
        from backend.migrate import upgrade_to_head

        settings = get_settings()
        configure_logging(settings.log_level, settings.log_format)  # Alembic's lines, as ours
        # An embedded PostgreSQL stays up for the app, which finds it running; the last process
        # holding it stops it as it exits (the lifespan of one worker, or the supervisor of N).
        upgrade_to_head(settings)
    _serve(uvicorn_args)


def _serve(args: Sequence[str]) -> None:
    # uvicorn has no option for its server class: its CLI and its supervisor build theirs from
    # these module names, so in this process (the server, nothing else) they name ours.
    cli: Any = importlib.import_module("uvicorn.main")  # the attribute uvicorn.main is a command
    cli.Server = DrainingServer
    multiprocess.Process = DrainingWorker  # type: ignore[misc]
    cli.main.main(args=[APP, "--factory", *args], prog_name="python -m backend serve")
