"""Entity tags and conditional requests (RFC 9110 sections 8.8.3 and 13): lost-update protection
with `If-Match`, revalidation with `If-None-Match`.

A task's ETag is `"<id>.<version>"`: `tasks.version` is raised by every change, in the same
statement, so the tag changes whenever the task does and `If-Match` can be checked inside the
write's own WHERE clause (no read-then-write race). A list's ETag is a hash of the page as sent,
body and `Link` header: it changes with any change to what that user's page shows and can depend
on nothing else, because the page holds only that user's tasks.

Nothing here reads the database or raises for a missing header: a request without these headers
pays for one header lookup.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import Response

from backend.errors import InvalidPrecondition
from backend.models import MAX_ID

# Per-user data: a browser may keep it, but must ask (with If-None-Match) before reusing it.
CACHE_CONTROL = "private, no-cache"
_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')
_TASK_TAG = re.compile(r"([1-9][0-9]{0,18})\.([1-9][0-9]{0,18})")


def task_etag(task_id: int, version: int) -> str:
    return f'"{task_id}.{version}"'


def page_etag(body: bytes, link: str | None) -> str:
    digest = hashlib.blake2b(body, digest_size=16)
    if link:
        digest.update(link.encode())
    return f'"{digest.hexdigest()}"'


@dataclass(frozen=True, slots=True)
class _Tags:
    """A parsed If-Match / If-None-Match: `*`, or entity tags as (weak, opaque) pairs."""

    any: bool
    tags: Sequence[tuple[bool, str]] = ()


def _parse(headers: Headers, name: str) -> _Tags | None:
    values = headers.getlist(name)
    if not values:
        return None
    value = ",".join(values).strip()
    if value == "*":
        return _Tags(any=True)
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(value):
        match = _ENTITY_TAG.match(value, position)
        if match is None or match.end() == position:
            raise InvalidPrecondition(
                f"{name} must be * or a list of quoted entity tags, as the ETag header gives them."
            )
        tags.append((match[1] is not None, match[2]))
        position = match.end()
    if not tags:
        raise InvalidPrecondition(f"{name} is empty.")
    return _Tags(any=False, tags=tags)


def if_match_versions(headers: Headers, task_id: int) -> list[int] | None:
    """The versions of task `task_id` that `If-Match` accepts, or None when it asks for nothing
    (absent, or `*`: the task must exist, which every write checks anyway).

    An empty list is a precondition no version meets. Strong comparison: a weak tag never
    matches, nor does another task's tag.
    """
    parsed = _parse(headers, "If-Match")
    if parsed is None or parsed.any:
        return None
    versions = []
    for weak, opaque in parsed.tags:
        match = None if weak else _TASK_TAG.fullmatch(opaque)
        if match and int(match[1]) == task_id and int(match[2]) <= MAX_ID:
            versions.append(int(match[2]))
    return versions


def if_none_match(headers: Headers) -> _Tags | None:
    """The request's If-None-Match, parsed before any database work (400 when malformed)."""
    return _parse(headers, "If-None-Match")


def not_modified(wanted: _Tags | None, etag: str) -> Response | None:
    """A 304 when If-None-Match names `etag` (weak comparison) or is `*`; else None."""
    if wanted is None:
        return None
    if wanted.any or any(f'"{opaque}"' == etag for _, opaque in wanted.tags):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
    return None
