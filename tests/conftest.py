"""Fixtures: one throwaway embedded PostgreSQL per pytest process (each xdist worker), started
on a copy of a cluster migrated with the real Alembic CLI once and kept in .cache/ until the
migrations or the packages change; the real app over httpx's ASGITransport; every test starts
from empty tables."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import importlib.metadata
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import asyncpg
import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI

from backend.config import Settings
from backend.db import EmbeddedPostgres
from backend.main import create_app

# A fixed test secret, as random as a real one (weak secrets are refused at start-up).
SECRET = "Ha2gNW_NAILAYwOr9o1q6gxCX8FCPtTr_wwPgdH34YxHa6Dw25ibSc5DEGxQbRkn"
ROOT = Path(__file__).resolve().parents[1]

Headers = dict[str, str]
TokenFactory = Callable[..., str]
ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]
FreshDatabase = Callable[[], Awaitable[str]]
_database_names = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    """Under mutation testing, many pytest sessions run at once: each gets its own temporary
    directory, since pytest prunes the shared numbered ones at start and a session whose
    directory vanished would fail, which a mutation tool counts as a killed mutant."""
    if os.environ.get("MUTANT_UNDER_TEST") and config.option.basetemp is None:
        _sweep_dead_mutant_sessions()
        basetemp = config.option.basetemp = config.stash[_MUTANT_BASETEMP] = tempfile.mkdtemp(
            prefix=_MUTANT_PREFIX
        )
        # Beside the directory (pytest empties it), held for as long as this process lives:
        # the kernel lets go of the lock however the process ends.
        owner = Path(f"{basetemp}{_OWNER}").open("w")  # noqa: SIM115 (closed in unconfigure)
        config.stash[_MUTANT_OWNER] = owner
        fcntl.flock(owner, fcntl.LOCK_EX)


def pytest_unconfigure(config: pytest.Config) -> None:
    if (basetemp := config.stash.get(_MUTANT_BASETEMP, None)) is not None:
        shutil.rmtree(basetemp, ignore_errors=True)
        Path(f"{basetemp}{_OWNER}").unlink(missing_ok=True)
        config.stash[_MUTANT_OWNER].close()


def _sweep_dead_mutant_sessions() -> None:
    """A mutant session that timed out was killed before its fixtures could stop their
    PostgreSQL servers: stop those (fast shutdown) and drop their directories, once the
    session that owned them is gone (its lock is free)."""
    for basetemp in Path(tempfile.gettempdir()).glob(f"{_MUTANT_PREFIX}*"):
        if basetemp.suffix == _OWNER:
            continue
        lock = Path(f"{basetemp}{_OWNER}")
        try:
            with lock.open("r") as owner:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except FileNotFoundError:
            with suppress(FileNotFoundError):  # (or removed by its session meanwhile)
                if time.time() - basetemp.stat().st_mtime < 60:
                    continue  # just made: its session has yet to take the lock
        except BlockingIOError:
            continue  # its session is still running
        for pid_file in basetemp.glob("**/postmaster.pid"):
            with suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        shutil.rmtree(basetemp, ignore_errors=True)
        lock.unlink(missing_ok=True)


_MUTANT_BASETEMP = pytest.StashKey[str]()
_MUTANT_PREFIX = "pytest-mutant-"
_MUTANT_OWNER = pytest.StashKey[IO[str]]()
_OWNER = ".lock"  # <directory>.lock: locked by the pytest session using the directory

# Fixtures through which a test's app reaches PostgreSQL by the route under test.
_ROUTED_FIXTURES = frozenset({"database_url"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `db` every test that reaches the database by the route under test, so make
    test's PgBouncer pass (`-m db`) runs those alone: the rest cannot tell the routes apart."""
    for item in items:
        if _ROUTED_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


def make_dry_run(target: str) -> str:
    """What `make TARGET` would run (`make -n`): the recipes as make expands them, its own and
    its prerequisites'."""
    return subprocess.run(  # noqa: S603 (fixed arguments)
        ["make", "--no-print-directory", "-n", target],  # noqa: S607 (the make on PATH)
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


UVICORN_CLI = ("-m", "uvicorn", "backend.main:create_app", "--factory")
# The production command (README, Deploy): uvicorn's CLI, draining, refusing from the parser.
SERVE_CLI = ("-m", "backend", "serve", "--http", "backend.admission:AdmissionHttpToolsProtocol")


@asynccontextmanager
async def uvicorn_process(
    database_url: str,
    workdir: Path,
    *flags: str,
    env: Mapping[str, str] | None = None,
    listener: socket.socket | None = None,
    cli: Sequence[str] = UVICORN_CLI,
    port: int | None = None,
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """The app under the uvicorn CLI in its own process, as deployed: its URL and process, once
    /healthz answers. Its output goes to `workdir`/server.log; it is stopped (SIGTERM) after.
    `listener`: a listening socket of the test's to serve on (uvicorn --fd), options and all.
    `cli`: SERVE_CLI runs `python -m backend serve`; `port`: a fixed one (a free one if None)."""
    command = [sys.executable, *cli]
    if listener is None:
        port = port or free_port()
        command += ["--port", str(port)]
    else:
        port = listener.getsockname()[1]
        command += ["--fd", str(listener.fileno())]
    command += ["--app-dir", str(ROOT), "--no-access-log", *flags]
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
        "DB_STATEMENT_CACHE": "false" if VIA_PGBOUNCER else "",  # as the settings fixture does
        **(env or {}),
    }
    log = workdir / "server.log"
    with log.open("wb") as output:
        server = await asyncio.create_subprocess_exec(
            *command,
            cwd=workdir,
            env=environment,
            stdout=output,
            stderr=output,
            pass_fds=() if listener is None else (listener.fileno(),),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
            while True:
                try:
                    if (await probe.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.returncode is None, log.read_text()
                assert time.monotonic() < deadline, "uvicorn did not start"
                await asyncio.sleep(0.05)
        yield url, server
    finally:
        if server.returncode is None:
            server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()  # a hung shutdown fails its test, and leaves no process behind
            await server.wait()
            raise


def run_pgbouncer(postgres: EmbeddedPostgres, workdir: Path, settings: str = "") -> Iterator[str]:
    """Start PgBouncer (as the server's unprivileged user: it refuses root) and yield its URL.

    `settings`: more lines for its [pgbouncer] section (TLS, say)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        reason = "pgbouncer is not installed (brew install pgbouncer, or apt-get install pgbouncer)"
        if os.environ.get("CI"):  # make test installs it wherever it can, as in CI
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    (workdir / "userlist.txt").write_text('"postgres" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={postgres.socket_dir} port={postgres.port} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = 8
max_client_conn = 500
logfile = {workdir}/pgbouncer.log
{settings}
"""
    )
    for path in [workdir, *workdir.iterdir()]:  # pgbouncer writes its log there
        shutil.chown(path, postgres.system_user)
    workdir.chmod(0o755)
    for parent in workdir.parents:  # the unprivileged user must reach the config
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    process = subprocess.Popen(  # noqa: S603
        [binary, "-u", "embedded_postgres", str(workdir / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        log = workdir / "pgbouncer.log"
        assert process.poll() is None, log.read_text() if log.exists() else "no log"
        assert time.monotonic() < deadline, "pgbouncer did not start"
        time.sleep(0.05)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        process.terminate()
        process.wait(timeout=10)


def make_token(
    sub: str | None, *, secret: str = SECRET, algorithm: str = "HS256", **claims: Any
) -> str:
    """An HS256 token the way the web app's server mints one; `claims` override the defaults."""
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + 900, "email": f"{sub}@example.com"}
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, secret, algorithm=algorithm
    )


def bearer(user_id: str, **claims: Any) -> Headers:
    return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}


async def create_task(client: httpx.AsyncClient, headers: Headers, **body: Any) -> httpx.Response:
    """Creates a task (title "t" unless `body` gives one) for the user `headers`' token names,
    under that user's own path; asserts the 201 and returns the response."""
    token = headers["Authorization"].removeprefix("Bearer ")
    user = jwt.decode(token, options={"verify_signature": False})["sub"]
    path = f"/api/{quote(user, safe='')}/tasks"
    response = await client.post(path, headers=headers, json={"title": "t", **body})
    assert response.status_code == 201, response.text
    return response


def run_alembic(
    database_url: str, *args: str, unpooled_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The Alembic CLI exactly as `make migrate` runs it, in a subprocess (it owns its loop).

    Migrations prefer DATABASE_URL_UNPOOLED: it is `unpooled_url`, or `database_url` itself, so
    a developer's `.env` can never send a test's migrations elsewhere."""
    env = {**os.environ, "DATABASE_URL": database_url}
    env["DATABASE_URL_UNPOOLED"] = unpooled_url or database_url
    return subprocess.run(  # noqa: S603 (our own interpreter and fixed arguments)
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


# Migrated clusters to copy from (migrated_postgres).
MIGRATED_CLUSTERS = ROOT / ".cache" / "test-postgres"
_CLUSTER_PACKAGES = ("embedded-postgres", "alembic", "sqlalchemy", "sqlmodel", "asyncpg")


def migrated_postgres(data_dir: Path) -> EmbeddedPostgres:
    """A PostgreSQL of its own in `data_dir` (deleted when stopped), its schema at head.

    Every pytest process needs one, and initdb plus the Alembic CLI cost about 3 s each time:
    the cluster is made and migrated once, by the real CLI, stopped cleanly, and each process
    starts on a copy of its files. A new one is made when anything that decides its schema or
    its files changes: the migrations, the packages that write its DDL or are its server, or who
    runs it (as root, its files are embedded_postgres's). Mutation tools run this from copies of
    the tree that hold no uv.lock: the installed versions are what counts."""
    versions = [f"{name} {importlib.metadata.version(name)}" for name in _CLUSTER_PACKAGES]
    key = hashlib.sha256(f"euid {os.geteuid()}; {'; '.join(versions)}".encode())
    for migration in sorted((ROOT / "backend" / "migrations").rglob("*.py")):
        key.update(migration.relative_to(ROOT).as_posix().encode() + migration.read_bytes())
    template = MIGRATED_CLUSTERS / key.hexdigest()[:16]
    MIGRATED_CLUSTERS.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers and concurrent sessions: one makes it, and none copies while another
    # makes one (which removes the others).
    with (MIGRATED_CLUSTERS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "PG_VERSION").exists():
            _make_migrated_cluster(template)
        # cp -a: the server's own user keeps owning its files (embedded_postgres's, as root).
        subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)  # noqa: S603, S607
    return EmbeddedPostgres(data_dir, delete_on_stop=True)


def _make_migrated_cluster(template: Path) -> None:
    for stale in MIGRATED_CLUSTERS.iterdir():  # older migrations' clusters, and a half-made one
        if stale.is_dir():
            shutil.rmtree(stale)
    building = template.with_name(template.name + ".partial")
    server = EmbeddedPostgres(building)
    try:
        run_alembic(server.url(), "upgrade", "head")
    finally:
        server.stop()
    # A server killed instead of stopped would leave files that need recovery: never copied.
    assert not (building / "postmaster.pid").exists(), "PostgreSQL did not stop cleanly"
    (building / ".handle_pids.json").unlink(missing_ok=True)  # embedded_postgres's, per run
    (building / "log").write_text("")
    building.rename(template)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = migrated_postgres(tmp_path_factory.mktemp("pg") / "data")
    yield server
    server.stop()


@pytest.fixture
async def new_database(postgres: EmbeddedPostgres) -> AsyncIterator[FreshDatabase]:
    """Creates empty databases on the test server (URL each); all dropped after the test."""
    admin = await asyncpg.connect(postgres.url())
    created: list[str] = []

    async def create() -> str:
        name = f"fresh_{next(_database_names)}"
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
        created.append(name)
        return postgres.url(name)

    try:
        yield create
    finally:
        for name in created:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(scope="session")
def direct_database_url(postgres: EmbeddedPostgres) -> str:
    return postgres.url()  # migrated to head (migrated_postgres)


@pytest.fixture(scope="session")
def pgbouncer(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real PgBouncer in transaction mode (Neon's pooler mode) in front of the test server."""
    yield from run_pgbouncer(postgres, tmp_path_factory.mktemp("pgbouncer"))


# TEST_DATABASE_ROUTE=pgbouncer runs the suite through PgBouncer (make test does a second pass).
VIA_PGBOUNCER = os.environ.get("TEST_DATABASE_ROUTE") == "pgbouncer"


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest, direct_database_url: str) -> str:
    if VIA_PGBOUNCER:
        url: str = request.getfixturevalue("pgbouncer")
        return url
    return direct_database_url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        better_auth_secret=SECRET,
        db_statement_cache=False if VIA_PGBOUNCER else None,
        # Admission control off in-process: the suite's bursts (100 creates at once, under
        # coverage) are not overload, and its synchronous tests stop the shared event loop for
        # seconds, a lag it would rightly shed for. test_admission turns it on; the servers in
        # processes of their own (uvicorn_process) run it as deployed.
        admission_max_concurrency=0,
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


class Database:
    """Straight to PostgreSQL (never through the app or PgBouncer): for setup and assertions."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await connection.fetch(query, *args)]
        finally:
            await connection.close()

    async def execute(self, query: str) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(query)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def db(direct_database_url: str) -> Database:
    return Database(direct_database_url)


@pytest.fixture(scope="session")
async def _shared_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def clean_tables(db: Database) -> AsyncIterator[None]:
    """Empties the tables after the test, whichever app wrote to them."""
    yield
    await db.execute("TRUNCATE tasks, users, idempotency_keys")


@pytest.fixture
async def client(_shared_client: httpx.AsyncClient, clean_tables: None) -> httpx.AsyncClient:
    """The app's client; every test that uses it starts from empty tables."""
    return _shared_client


@asynccontextmanager
async def app_client(app: FastAPI, **transport: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` over ASGITransport (`transport`: its options), the app's lifespan
    running for as long as the client: for a test that must build or time the app itself."""
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app, **transport)
        async with httpx.AsyncClient(transport=asgi, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def make_client(settings: Settings, clean_tables: None) -> AsyncIterator[ClientFactory]:
    """`await make_client(**changes)`: a client of a new app whose settings differ by `changes`
    (set as given: no validator runs), its lifespan started; `make_client(other, **changes)`
    starts from `other` instead, for settings that must be derived (say from BETTER_AUTH_URL).
    All closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(base: Settings | None = None, /, **changes: Any) -> httpx.AsyncClient:
            app = create_app((base or settings).model_copy(update=changes))
            return await stack.enter_async_context(app_client(app))

        yield make


# Nothing listens on port 9 on loopback: every connection attempt is refused at once.
UNREACHABLE_DATABASE = "postgresql://u:p@127.0.0.1:9/app"
DATABASE_DOWN = {"database_url": UNREACHABLE_DATABASE, "db_connect_budget_seconds": 0}


def with_query(url: str, **parameters: str) -> str:
    """`url` with these query parameters added (asyncpg passes unknown ones to the server)."""
    separator = "&" if "?" in url else "?"
    return url + separator + "&".join(f"{name}={value}" for name, value in parameters.items())


@pytest.fixture(scope="session")
def live_server(settings: Settings) -> Iterator[str]:
    """The app under a real uvicorn (its own thread and loop), for synchronous test drivers."""
    with serve(create_app(settings)) as url:
        yield url


@contextmanager
def serve(app: FastAPI, **options: Any) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yields its base URL.
    `options` go to uvicorn.Config (`http=`, say)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn exited while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def empty_tables(database_url: str) -> None:
    """Synchronous twin of `clean_tables`, for tests that run outside the event loop."""
    truncate = Database(database_url).execute("TRUNCATE tasks, users, idempotency_keys")
    worker = threading.Thread(target=asyncio.run, args=(truncate,))
    worker.start()
    worker.join()


@pytest.fixture
def clean_tables_sync(direct_database_url: str) -> Iterator[None]:
    yield
    empty_tables(direct_database_url)


@pytest.fixture
def alice() -> Headers:
    return bearer("alice")


@pytest.fixture
def bob() -> Headers:
    return bearer("bob")
