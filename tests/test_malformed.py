"""A survey of hostile input: each is a clear 4xx (never a 500), and nothing is written."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.conftest import Database, Headers, bearer

JSON = {"Content-Type": "application/json"}


async def _count(db: Database) -> int:
    return int((await db.fetch("SELECT count(*) FROM tasks"))[0][0])


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("invalid UTF-8", b'{"title": "\xff\xfe\xc3\x28"}'),
        ("truncated UTF-8", b'{"title": "caf\xc3"}'),
        (
            "nested 10,000 deep",
            b'{"title": "x", "description": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        ),
        ("integer of 5,000 digits", b'{"title": ' + b"9" * 5_000 + b"}"),
        ("float overflow", b'{"title": "x", "description": 1e400}'),
        ("NaN literal", b'{"title": NaN}'),
        ("lone surrogate", b'{"title": "\\ud800"}'),
        ("reversed surrogates", b'{"title": "\\udc00\\ud800"}'),
        ("escaped NUL", b'{"title": "a\\u0000b"}'),
        ("empty body", b""),
        ("whitespace body", b"   "),
        ("null body", b"null"),
    ],
)
async def test_hostile_body_is_a_clean_4xx(
    client: httpx.AsyncClient, db: Database, alice: Headers, name: str, raw: bytes
) -> None:
    response = await client.post("/api/alice/tasks", headers={**alice, **JSON}, content=raw)
    assert response.status_code == 422, (name, response.text)
    assert response.json()["code"] == "validation_error"
    assert await _count(db) == 0


async def test_utf8_byte_order_mark_is_tolerated(client: httpx.AsyncClient, alice: Headers) -> None:
    raw = b'\xef\xbb\xbf{"title": "x"}'  # RFC 8259 lets a parser ignore it; Python's does
    response = await client.post("/api/alice/tasks", headers={**alice, **JSON}, content=raw)
    assert response.status_code == 201


async def test_duplicate_keys_take_the_last_value(
    client: httpx.AsyncClient, alice: Headers
) -> None:
    raw = b'{"title": "first", "title": "second"}'
    response = await client.post("/api/alice/tasks", headers={**alice, **JSON}, content=raw)
    assert response.status_code == 201
    assert response.json()["title"] == "second"


@pytest.mark.parametrize(
    "title",
    [
        "👩‍👩‍👧‍👦 family",  # ZWJ sequence of astral code points (surrogate pairs in UTF-16)
        "\U0001d518\U0001d52b\U0001d526 \u2705",  # mathematical Fraktur letters, a check mark
        "e\u0301 vs é",  # combining mark vs precomposed: kept as sent, not normalised
        "right-to-left \u202e txet",
        "x" * 199 + "😀",  # 200 code points, 203 UTF-16 units, 203 UTF-8 bytes: fits
    ],
)
async def test_unicode_round_trips_intact(
    client: httpx.AsyncClient, alice: Headers, title: str
) -> None:
    created = await client.post("/api/alice/tasks", headers=alice, json={"title": title})
    assert created.status_code == 201, created.text
    fetched = await client.get(created.headers["Location"], headers=alice)
    assert fetched.json()["title"] == title
    listed = await client.get("/api/alice/tasks", headers=alice)
    assert listed.json()[0]["title"] == title


@pytest.mark.parametrize("title", ["\u3000\u2003", "\xa0", "\u2028\u2029 \t"])
async def test_unicode_whitespace_only_title_is_422(
    client: httpx.AsyncClient, alice: Headers, title: str
) -> None:
    response = await client.post("/api/alice/tasks", headers=alice, json={"title": title})
    assert response.status_code == 422


def _raw_http(base_url: str, request: bytes) -> bytes:
    """One request over a plain socket: no client library normalises the path or headers.

    Every caller sends `Connection: close`, so the reply is everything up to the server's close:
    the body may come in a later segment than the head.
    """
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return b"".join(chunks)


@pytest.mark.usefixtures("clean_tables_sync")
@pytest.mark.parametrize(
    "path_user",
    ["alice%2Ftasks%2F1", "%2E%2E", "..%2F..%2Fbob", "alice%2F..%2Fbob", "bob%252F", "%00bob"],
)
async def test_encoded_slashes_and_dots_in_user_id(live_server: str, path_user: str) -> None:
    request = (
        f"GET /api/{path_user}/tasks HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        f"Authorization: {bearer('bob')['Authorization']}\r\n\r\n"
    ).encode()
    reply = await asyncio.to_thread(_raw_http, live_server, request)
    status = int(reply.split(b" ", 2)[1])
    assert status in {403, 404}, reply[:200]


@pytest.mark.usefixtures("clean_tables_sync")
async def test_ten_megabyte_header_is_refused_and_the_server_lives_on(live_server: str) -> None:
    huge = b"X-Huge: " + b"a" * (10 * 1024 * 1024) + b"\r\n"
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + huge + b"Connection: close\r\n\r\n"
    reply = await asyncio.to_thread(_raw_http, live_server, request)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b'"code":"headers_too_large"' in reply
    async with httpx.AsyncClient(base_url=live_server) as c:
        assert (await c.get("/healthz")).status_code == 200


@pytest.mark.usefixtures("clean_tables_sync")
@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/healthz?q=" + "a" * 30_000, 431),  # the query string is part of the request line
        ("/" + "a" * 30_000, 431),
        ("/healthz?q=" + "a" * 15_000, 200),  # under 16 KiB with the headers: served
    ],
    ids=["30 KB query string", "30 KB path", "15 KB query string"],
)
async def test_request_target_counts_toward_the_header_cap(
    live_server: str, target: str, status: int
) -> None:
    request = f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    reply = await asyncio.to_thread(_raw_http, live_server, request)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]


@pytest.mark.usefixtures("clean_tables_sync")
async def test_garbage_transfer_encoding_is_refused_by_the_server(live_server: str) -> None:
    # Found by `make fuzz`: uvicorn answers 400 itself (not our JSON shape: no app code runs).
    request = (
        "GET /api/alice/tasks/1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: &?~Bz-\r\n"
        f"Authorization: {bearer('alice')['Authorization']}\r\nConnection: close\r\n\r\n"
    ).encode()
    reply = await asyncio.to_thread(_raw_http, live_server, request)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    async with httpx.AsyncClient(base_url=live_server) as c:
        assert (await c.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"title": "a\x01b"}, False),  # JSON would write it as six bytes
        ({"title": "0\x1f"}, False),
        ({"title": "tab\there"}, False),  # a title is one line
        ({"title": "two\nlines"}, False),
        ({"title": "del\x7f"}, False),
        ({"title": "c1\x85control"}, False),
        ({"title": "  \tpadded\n "}, True),  # whitespace around it is trimmed first
        ({"title": "t", "description": "line one\nline two\r\n\tindented"}, True),
        ({"title": "t", "description": "bell\x07"}, False),
        ({"title": "t", "description": "del\x7f"}, False),
    ],
)
async def test_control_characters(
    client: httpx.AsyncClient, db: Database, alice: Headers, body: dict[str, str], accepted: bool
) -> None:
    """A title is one line of text: no control characters. A description may hold tabs and line
    breaks, no other control character."""
    response = await client.post("/api/alice/tasks", headers=alice, json=body)
    if accepted:
        assert response.status_code == 201, response.text
        assert response.json()["description"] == body.get("description")
    else:
        assert (response.status_code, response.json()["code"]) == (422, "validation_error")
        assert await _count(db) == 0
