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
# RFC 9110 5.6.1.2: empty list elements (", x", "x,, y") are accepted and ignored.
_ELEMENT_START = re.compile(r"[^\s,]")
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*(?:,|$)')
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

    def versions_of(self, task_id: int, *, weak: bool) -> list[int]:
        """The versions of task `task_id` these tags name; weak tags too when `weak` (the weak
        comparison of If-None-Match), never for the strong one of If-Match."""
        versions = []
        for is_weak, opaque in self.tags:
            match = None if is_weak and not weak else _TASK_TAG.fullmatch(opaque)
            if match and int(match[1]) == task_id and int(match[2]) <= MAX_ID:
                versions.append(int(match[2]))
        return versions


def _parse(headers: Headers, name: str) -> _Tags | None:
    values = headers.getlist(name)
    if not values:
        return None
    value = ",".join(values).strip()
    if value == "*":
        return _Tags(any=True)
    tags: list[tuple[bool, str]] = []
    position = 0
    while (element := _ELEMENT_START.search(value, position)) is not None:
        match = _ENTITY_TAG.match(value, element.start())
        if match is None:
            raise InvalidPrecondition(
                f"{name} must be * or a list of quoted entity tags, as the ETag header gives them."
            )
        tags.append((match[1] is not None, match[2]))
        position = match.end()
    if not tags:
        raise InvalidPrecondition(f"{name} is empty.")
    return _Tags(any=False, tags=tags)


@dataclass(frozen=True, slots=True)
class Preconditions:
    """What If-Match and If-None-Match ask of a write to one task, in terms its WHERE checks:
    the task's version must be one of `versions` (None: any) and none of `excluded`."""

    versions: list[int] | None = None
    excluded: list[int] | None = None

    @property
    def asked(self) -> bool:
        """Whether a write that found no row may have been refused by these (a 412)."""
        return self.versions is not None or self.excluded is not None


NONE = Preconditions()


def preconditions(headers: Headers, task_id: int) -> Preconditions:
    """If-Match and If-None-Match of a write to task `task_id` (RFC 9110 13.1.1, 13.1.2), parsed
    before any database work (400 when malformed).

    If-Match compares strongly: a weak tag, or another task's, never matches; `*` asks only
    that the task exist, which every write checks anyway. If-None-Match compares weakly; `*`
    refuses any existing task (no version is acceptable), as a listed current tag does.
    """
    if_match, if_none_match = _parse(headers, "If-Match"), _parse(headers, "If-None-Match")
    if if_match is None and if_none_match is None:
        return NONE
    versions = None
    if if_match is not None and not if_match.any:
        versions = if_match.versions_of(task_id, weak=False)
    excluded = None
    if if_none_match is not None:
        if if_none_match.any:
            versions = []
        else:
            excluded = if_none_match.versions_of(task_id, weak=True)
    return Preconditions(versions, excluded)


def if_none_match(headers: Headers) -> _Tags | None:
    """The request's If-None-Match for a read, parsed before any database work (400 when
    malformed)."""
    return _parse(headers, "If-None-Match")


def not_modified(wanted: _Tags | None, etag: str) -> Response | None:
    """A 304 when If-None-Match names `etag` (weak comparison) or is `*`; else None."""
    if wanted is None:
        return None
    if wanted.any or any(f'"{opaque}"' == etag for _, opaque in wanted.tags):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
    return None
