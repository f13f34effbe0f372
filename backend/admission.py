"""Admission control: past capacity, the excess is answered at once and the rest stays fast.

Clients in the open keep sending whatever the server does. Taken in without a bound, every
request shares the one event loop and the database pool with all the others, so each waits
longer than the last (seconds at twice capacity) and memory grows with the backlog. Here at
most `max_concurrency` requests are past admission at once; the others wait in one FIFO queue
in front of everything (routing, body parsing, token checks, the pool's own wait). No request
waits longer than `max_wait`: it is refused then. And once the oldest waiter has waited half
of that, the queue is a standing one (more arrive than finish) and newcomers are refused at
once instead of joining it: waiting would only make their answer late (CoDel's signal: the
time in the queue, not its length). The event loop is a queue too, one no count sees (requests
read but not yet run, CPU work that never suspends, a loop starved of its core): when a timer
runs half of `max_wait` late, newcomers are refused at once as well. A refusal is 503
`overloaded` with `Retry-After`.

Two doors apply the same rule to one `Admission`:
- `AdmissionMiddleware`, plain ASGI, in the app's stack (always, under any ASGI server);
- `AdmissionHttpToolsProtocol`, uvicorn's httptools protocol answering the refusal from the
  parser callback, with no ASGI task at all: `uvicorn --http
  backend.admission:AdmissionHttpToolsProtocol` (make run, bench). A refusal through the app's
  stack costs about a sixth of a served request; from the parser, about a twentieth, and
  that is what leaves the CPU to the admitted requests at 4x capacity.

Health checks and /metrics pass both doors untouched: they must answer while requests are
being shed. The refusal path must stay cheap: no body read, no routing, no logging.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from backend.config import Settings
from backend.errors import Overloaded
from backend.middleware import HEADER as REQUEST_ID_HEADER
from backend.middleware import request_id_for

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_EXEMPT_TARGETS = frozenset(path.encode() for path in EXEMPT_PATHS)
# In flight per pooled connection: enough to keep the pool busy while others are in framework
# work (goodput was flat from 2x the pool up in bench/_openloop.py), few enough that the time
# inside stays short.
CONCURRENCY_PER_POOL_CONNECTION = 6


@dataclass(frozen=True)
class AdmissionLimits:
    max_concurrency: int
    max_queue: int
    max_wait: float  # seconds
    retry_after_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionLimits | None:
        """The configured limits; None when ADMISSION_MAX_CONCURRENCY=0 (admission off)."""
        concurrency = settings.admission_max_concurrency
        if concurrency == 0:
            return None
        return cls(
            max_concurrency=concurrency or CONCURRENCY_PER_POOL_CONNECTION * settings.db_pool_size,
            max_queue=settings.admission_max_queue,
            max_wait=settings.admission_max_wait_seconds,
            retry_after_seconds=settings.admission_retry_after_seconds,
        )


class Admission:
    """Requests in flight, the queue of those waiting, and the one refusal, shared by both
    doors. One per app; it lives on the event loop and is never touched from another thread."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.refused = 0  # since start, for tests
        self.on_refused: Callable[[], object] | None = None  # for operators: a metric's inc
        self._queue: deque[tuple[float, asyncio.Future[bool]]] = deque()
        self._standing_after = limits.max_wait / 2
        self._timer: asyncio.TimerHandle | None = None
        # How late the loop runs a timer: time requests spend read but not yet run (or not
        # yet read), which no count of requests in flight sees (see `_watch_the_loop`).
        self.loop_lag = 0.0
        self._tick = limits.max_wait / 10
        self._watch: asyncio.TimerHandle | None = None
        self._used = False  # since the last tick
        refusal = Overloaded(limits.retry_after_seconds).response()
        self.refusal_headers = refusal.raw_headers
        self.refusal_body = refusal.body
        self._refusal_head = STATUS_LINE[503] + b"".join(
            name + b": " + value + b"\r\n" for name, value in refusal.raw_headers
        )

    @property
    def waiting(self) -> int:
        """Requests in the queue (some may have been cancelled since)."""
        return len(self._queue)

    def refuses_at_once(self) -> bool:
        """A request would be refused without waiting: the event loop runs half of `max_wait`
        late, or there is no free slot and the queue is full or standing (its oldest has waited
        half of `max_wait`)."""
        self._used = True
        if self.loop_lag > self._standing_after:
            return True
        queue = self._queue
        if not queue:
            limits = self.limits
            return limits.max_queue == 0 and self.in_flight >= limits.max_concurrency
        now = asyncio.get_running_loop().time()
        return len(queue) >= self.limits.max_queue or now - queue[0][0] > self._standing_after

    async def enter(self) -> bool:
        """True when the request may go on (then `leave()` once it is done); False: refuse it."""
        queue = self._queue
        if self._watch is None:
            self._watch_the_loop()
        if (
            self.in_flight < self.limits.max_concurrency
            and not queue
            and self.loop_lag <= self._standing_after
        ):
            self._used = True
            self.in_flight += 1
            return True
        if self.refuses_at_once():
            self.count_refusal()
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiter: asyncio.Future[bool] = loop.create_future()
        queue.append((now, waiter))
        if self._timer is None:
            self._timer = loop.call_at(now + self.limits.max_wait, self._expire)
        try:
            admitted = await waiter
        except asyncio.CancelledError:
            # Cancelled once handed a slot (result set, task not yet resumed): pass it on.
            if not waiter.cancelled() and waiter.result():
                self.leave()
            raise
        if not admitted:
            self.count_refusal()
        return admitted

    def count_refusal(self) -> None:
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused()

    def leave(self) -> None:
        """An admitted request is done: its slot goes to the longest waiter."""
        queue = self._queue
        while queue:
            _, waiter = queue.popleft()
            if not waiter.done():  # else cancelled while waiting
                waiter.set_result(True)  # the slot changes hands: in_flight stays
                return
        self.in_flight -= 1

    def _expire(self) -> None:
        """Refuse whoever has waited `max_wait`; one timer, re-armed for the new oldest."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        # A millisecond of slack: the loop's clock and timers have that resolution.
        while queue and (queue[0][0] + self.limits.max_wait <= now + 0.001 or queue[0][1].done()):
            _, waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(False)
        self._timer = (
            loop.call_at(queue[0][0] + self.limits.max_wait, self._expire) if queue else None
        )

    def _watch_the_loop(self) -> None:
        """A timer every tenth of `max_wait` measures the loop's lag. A request that does not
        suspend (CPU work only) never waits in our queue: it waits in the loop's, and a loop
        starved of its core makes everyone wait there. The lag counts once two ticks in a row
        ran late. The watch stops once nothing has used admission for a tick, and starts again
        with the next request."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._tick

        last_late = 0.0

        def tick() -> None:
            nonlocal due, last_late
            now = loop.time()
            late = max(0.0, now - due)
            # The lesser of two ticks in a row: a queue that persists, not one stall (a
            # process descheduled once, a slow callback) that is over by the time we know.
            self.loop_lag, last_late = min(late, last_late), late
            if not self._used and self.in_flight == 0 and not self._queue:
                self._watch, self.loop_lag = None, 0.0
                return
            self._used = False
            due = now + self._tick
            self._watch = loop.call_at(due, tick)

        self._watch = loop.call_at(due, tick)

    def refusal_response(
        self, server_headers: list[tuple[bytes, bytes]], request_id: str, keep_alive: bool
    ) -> bytes:
        """The whole HTTP/1.1 refusal for the parser door: what the app and uvicorn would send."""
        head = [self._refusal_head]
        head += [name + b": " + value + b"\r\n" for name, value in server_headers]
        head.append(b"x-request-id: " + request_id.encode() + b"\r\n")
        if not keep_alive and not any(_says_close(*header) for header in server_headers):
            head.append(b"connection: close\r\n")
        return b"".join(head) + b"\r\n" + self.refusal_body


class AdmissionMiddleware:
    """The ASGI door: waits for a slot in `admission`, or answers the pre-rendered 503."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if not await admission.enter():
            # Fresh messages: outer middleware adds its headers to the one it is given.
            headers = list(admission.refusal_headers)
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": admission.refusal_body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()


class _Answered:
    """Stands in for the cycle of a request the parser door answered (uvicorn reads these)."""

    response_complete = True
    disconnected = False
    message_event = asyncio.Event()


_ANSWERED = cast(RequestResponseCycle, _Answered())


class AdmissionHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing straight from the parser while admission refuses
    at once: no task, no ASGI messages. Anything it cannot answer exactly as the app would (a
    pipelined request behind another, a client not reading its answers, HEAD, Expect:
    100-continue, a cross-origin request CORS must label, an upgrade, an exempt path) takes
    the ASGI door."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admission = _admission_of(self.app)

    def on_headers_complete(self) -> None:
        # A refusal earlier in this read armed one; a second one, armed over it, would be lost
        # and still fire, closing the connection under a later request.
        self._unset_keepalive_if_required()
        admission = self._admission
        if (
            admission is None
            or not admission.refuses_at_once()
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.flow.write_paused  # a client not reading: uvicorn's own path waits for it
            or self.expect_100_continue
            or self.parser.should_upgrade()
            or self.parser.get_method() == b"HEAD"
            or self.url.partition(b"?")[0] in _EXEMPT_TARGETS
        ):
            super().on_headers_complete()
            return
        incoming = b""
        for name, value in self.headers:
            if name == b"origin":
                super().on_headers_complete()
                return
            if name == _REQUEST_ID:
                incoming = value
        admission.count_refusal()
        self.server_state.total_requests += 1
        self.cycle = _ANSWERED  # uvicorn's callbacks then drop the body that may follow
        server_headers = self.server_state.default_headers
        # As uvicorn's cycle decides: HTTP/1.0 and a server `Connection: close` (a drain) close too.
        keep_alive = (
            self.parser.get_http_version() != "1.0"
            and self.parser.should_keep_alive()
            and not any(_says_close(*header) for header in server_headers)
        )
        self.transport.write(
            admission.refusal_response(server_headers, request_id_for(incoming), keep_alive)
        )
        if not keep_alive:
            self.transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()


def _says_close(name: bytes, value: bytes) -> bool:
    """A `Connection` header with the `close` token, read as uvicorn's cycle reads it."""
    return name.lower() == b"connection" and b"close" in (
        token.strip().lower() for token in value.split(b",")
    )


def _admission_of(app: object) -> Admission | None:
    """The Admission of the app uvicorn serves (on `app.state`, under uvicorn's wrappers)."""
    for _ in range(8):
        admission = getattr(getattr(app, "state", None), "admission", None)
        if isinstance(admission, Admission):
            return admission
        app = getattr(app, "app", None)
        if app is None:
            break
    return None
