"""`make e2e`: the example web client (examples/web-client) in a real Chromium, against the real
API and a real Better Auth, started by the same launcher `make example` runs.

A person's story: sign up, add three tasks, toggle one, rename one, delete one, reload and find
the same state; a refused request shows the API's sentence; a second person in another browser
context sees none of it. The client's middleware (src/todo-api.ts) is driven for real too: a
token rejected with 401 is replaced and the request retried once, an expired one is replaced
before use, a read refused with 503 is retried after its Retry-After (not sooner, and at most
a second of jitter later), a create whose answer was lost is resent with its Idempotency-Key
and happens once, and a write without a key is never sent twice.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

from tests.conftest import SECRET
from tests.e2e.conftest import EXAMPLE, ROOT, free_port, wait_until_up

LAUNCHER = EXAMPLE / "run.py"
ARTIFACTS = ROOT / "test-results" / "e2e"
PASSWORD = "correct horse battery staple"
# Every browser context is one person behind the example's (trusted) proxy, with an address of
# its own: Better Auth allows 3 sign-ups per 10 s per address.
_ADDRESSES = (f"198.51.100.{n}" for n in itertools.count(1))


def test_the_readme_shows_the_client_code_the_page_runs() -> None:
    code = (EXAMPLE / "src" / "todo-api.ts").read_text()
    assert f"```ts\n{code}```" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`make example` on free ports and a throwaway data directory: (page origin, API origin)."""
    web_port, api_port = free_port(), free_port()
    workdir = tmp_path_factory.mktemp("web-client")
    log = (workdir / "example.log").open("w")
    env = {**os.environ, "WEB_PORT": str(web_port), "API_PORT": str(api_port)}
    env |= {"DATA_DIR": str(workdir / "data"), "BETTER_AUTH_SECRET": SECRET}
    env |= {"TRUSTED_PROXIES": "127.0.0.1"}
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(LAUNCHER)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    web, api = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{api_port}"
    wait_until_up([web, f"{api}/readyz"], process, workdir / "example.log")
    yield web, api
    process.send_signal(signal.SIGINT)  # what Ctrl-C on `make example` does
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # Debian's chromium where Playwright's own download is not possible (`make e2e` installs
    # it); elsewhere the browser from `playwright install chromium`.
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    async with async_playwright() as playwright:
        try:
            chromium = await playwright.chromium.launch(executable_path=executable)
        except Exception as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"no Chromium to drive (make e2e installs one): {exc}")
        yield chromium
        await chromium.close()


async def _new_context(browser: Browser, web: str) -> BrowserContext:
    """A browser context whose requests to Better Auth come through the proxy from an address
    of its own, and whose calls to the API the page records in `window.apiCalls`."""
    context = await browser.new_context()
    address = next(_ADDRESSES)

    async def through_the_proxy(route: Route) -> None:
        await route.continue_(headers=route.request.headers | {"x-forwarded-for": address})

    await context.route(f"{web}/api/auth/**", through_the_proxy)
    await context.add_init_script(_RECORD_API_CALLS)
    return context


# Each fetch() of the page to another origin (the API), by the page's clock: when it was sent
# and answered, with what.
_RECORD_API_CALLS = """
window.apiCalls = [];
const pageFetch = window.fetch;
window.fetch = async (input, init) => {
  const request = new Request(input, init);
  const call = { method: request.method, path: new URL(request.url).pathname,
                 key: request.headers.get("Idempotency-Key"), sentAt: Date.now() };
  if (new URL(request.url).origin !== location.origin) window.apiCalls.push(call);
  const response = await pageFetch(request);
  Object.assign(call, { status: response.status, answeredAt: Date.now() });
  return response;
};
"""


async def _api_calls(page: Page) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = await page.evaluate("window.apiCalls")
    return calls


@pytest.fixture
async def context(browser: Browser, example: tuple[str, str]) -> AsyncIterator[BrowserContext]:
    context = await _new_context(browser, example[0])
    yield context
    await context.close()


async def _sign_up(page: Page, web: str, email: str) -> None:
    await page.goto(web)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Name").fill(email.split("@")[0])
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#who")).to_have_text(email)


async def _add(page: Page, title: str) -> None:
    count = await page.locator("#tasks li").count()
    await page.get_by_label("New task").fill(title)
    await page.get_by_label("New task").press("Enter")
    await expect(page.locator("#tasks li")).to_have_count(count + 1)


def _row(page: Page, title: str) -> object:
    return page.locator("#tasks li", has=page.locator(".title", has_text=title))


async def test_a_persons_day_with_the_web_client(
    example: tuple[str, str], browser: Browser, context: BrowserContext
) -> None:
    web, _ = example
    page = await context.new_page()
    await _sign_up(page, web, "alice@example.com")
    await expect(page.locator("#empty")).to_be_visible()

    for title in ("Buy milk", "Write report", "Call mom"):
        await _add(page, title)
    await page.get_by_label("Done: Buy milk").check()
    await expect(page.locator("#tasks li.done .title")).to_have_text(["Buy milk"])

    await (
        page.locator("#tasks li", has_text="Write report")
        .get_by_role("button", name="Rename")
        .click()
    )
    await page.get_by_label("New title for Write report").fill("Write the report")
    await page.get_by_label("New title for Write report").press("Enter")
    await expect(page.locator("#tasks .title")).to_have_text(
        ["Buy milk", "Write the report", "Call mom"]
    )

    await (
        page.locator("#tasks li", has_text="Call mom").get_by_role("button", name="Delete").click()
    )
    await expect(page.locator("#tasks li")).to_have_count(2)

    await page.reload()  # the state lives in the API, not in the page
    await expect(page.locator("#tasks .title")).to_have_text(["Buy milk", "Write the report"])
    await expect(page.locator("#tasks li.done .title")).to_have_text(["Buy milk"])
    await expect(page.locator("#error")).to_be_hidden()

    # Another person, another browser context: none of alice's tasks, and theirs stay theirs.
    bobs_context = await _new_context(browser, web)
    bobs = await bobs_context.new_page()
    await _sign_up(bobs, web, "bob@example.com")
    await expect(bobs.locator("#empty")).to_be_visible()
    await expect(bobs.locator("#tasks li")).to_have_count(0)
    await _add(bobs, "Bob's secret plan")
    await bobs_context.close()
    await page.reload()
    await expect(page.locator("#tasks .title")).to_have_text(["Buy milk", "Write the report"])

    # A request the API refuses: its sentence is on the page, and nothing was added.
    await page.get_by_label("New task").fill("x" * 201)
    await page.get_by_label("New task").press("Enter")
    await expect(page.locator("#error")).to_contain_text("at most 200 characters")
    await expect(page.locator("#tasks li")).to_have_count(2)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "web-client.png", full_page=True)

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#auth")).to_be_visible()
    await page.reload()  # signed out for good: the session cookie is gone
    await expect(page.locator("#auth")).to_be_visible()


async def test_a_rejected_token_is_replaced_and_the_request_sent_once_more(
    example: tuple[str, str], context: BrowserContext
) -> None:
    web, api = example
    page = await context.new_page()
    await _sign_up(page, web, "carol@example.com")
    await expect(page.locator("#empty")).to_be_visible()  # the first list is in
    creates: list[int] = []

    async def spoil_the_first_token(route: Route) -> None:
        # The real API judges a real request whose token no longer verifies (as after a key
        # rotation): it answers 401, and the page must get a new JWT and retry, once.
        headers = route.request.headers
        is_create = route.request.method == "POST"
        if is_create and not creates:
            headers = headers | {"authorization": headers["authorization"][:-4] + "AAAA"}
        response = await route.fetch(headers=headers)
        if is_create:
            creates.append(response.status)
        await route.fulfill(response=response)

    await page.route(f"{api}/**", spoil_the_first_token)
    await _add(page, "after a 401")
    assert creates == [401, 201]
    await expect(page.locator("#error")).to_be_hidden()


async def test_an_expired_token_is_replaced_before_it_is_used(
    example: tuple[str, str], context: BrowserContext
) -> None:
    web, _ = example
    page = await context.new_page()
    await page.clock.install()
    await _sign_up(page, web, "dave@example.com")
    # The page fetches its first JWT for the first list: counted from here, it would race.
    await expect(page.locator("#empty")).to_be_visible()
    token_fetches: list[str] = []
    page.on(
        "request", lambda r: token_fetches.append(r.url) if "/api/auth/token" in r.url else None
    )

    await _add(page, "with the first token")
    assert token_fetches == []  # the JWT the first list was fetched with is still good
    await page.clock.fast_forward("16:00")  # Better Auth's JWTs live 15 minutes
    await _add(page, "with a new token")
    assert len(token_fetches) == 1


UNAVAILABLE = {"detail": "The database is unavailable.", "code": "database_unavailable"}


async def _unavailable(route: Route, retry_after: str) -> None:
    """Send the request on to the real API, and let its answer be lost: the page gets a 503
    (with the API's own CORS headers and request id) instead."""
    response = await route.fetch()
    headers = response.headers | {"retry-after": retry_after, "content-type": "application/json"}
    await route.fulfill(
        response=response, status=503, headers=headers, body=json.dumps(UNAVAILABLE)
    )


async def _pause_clock(page: Page) -> None:
    """From here on the page's timers fire only when the test moves its clock on."""
    await page.clock.pause_at(await page.evaluate("Date.now() / 1000") + 1)  # in seconds


async def test_a_read_refused_with_503_is_sent_again_after_retry_after_with_jitter(
    example: tuple[str, str], context: BrowserContext
) -> None:
    web, api = example
    page = await context.new_page()
    await page.clock.install()
    await _sign_up(page, web, "erin@example.com")
    await _add(page, "still here")
    await page.get_by_role("button", name="Sign out").click()
    await page.evaluate("window.apiCalls.length = 0")  # the calls before signing out aside
    refused: list[str] = []

    async def unavailable_once(route: Route) -> None:
        if refused:
            await route.fulfill(response=await route.fetch())
        else:
            refused.append(route.request.url)
            await _unavailable(route, retry_after="2")

    await page.route(f"{api}/api/*/tasks", unavailable_once)
    await _pause_clock(page)
    await page.get_by_label("Email").fill("erin@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()  # then the page lists the tasks
    await page.wait_for_function("window.apiCalls.some((call) => call.status === 503)")

    await page.clock.run_for(1999)  # Retry-After: 2, and not a millisecond sooner
    assert len(await _api_calls(page)) == 1
    await page.clock.run_for(1001)  # jitter: up to one second more
    await expect(page.locator("#tasks .title")).to_have_text(["still here"])
    first, again = await _api_calls(page)
    assert (first["status"], again["status"]) == (503, 200)
    assert 2000 <= again["sentAt"] - first["answeredAt"] <= 3000
    await expect(page.locator("#error")).to_be_hidden()


async def test_a_create_whose_answer_was_lost_is_sent_again_and_happens_once(
    example: tuple[str, str], context: BrowserContext
) -> None:
    web, api = example
    page = await context.new_page()
    await page.clock.install()
    await _sign_up(page, web, "frank@example.com")
    await expect(page.locator("#empty")).to_be_visible()
    replayed: list[str | None] = []  # the real API's Idempotent-Replayed, per create it got

    async def lose_the_first_answer(route: Route) -> None:
        if route.request.method != "POST":
            await route.fallback()
        elif not replayed:  # the API creates the task; its answer never reaches the page
            replayed.append(None)
            await _unavailable(route, retry_after="1")
        else:
            response = await route.fetch()
            replayed.append(response.headers.get("idempotent-replayed"))
            await route.fulfill(response=response)

    await page.route(f"{api}/api/*/tasks", lose_the_first_answer)
    await _pause_clock(page)
    await page.get_by_label("New task").fill("only once")
    await page.get_by_label("New task").press("Enter")
    await page.wait_for_function("window.apiCalls.some((call) => call.status === 503)")
    await page.clock.run_for(2000)
    await expect(page.locator("#tasks .title")).to_have_text(["only once"])

    first, again = [call for call in await _api_calls(page) if call["method"] == "POST"]
    assert (first["status"], again["status"]) == (503, 201)
    assert first["key"]
    assert again["key"] == first["key"]
    assert replayed == [None, "true"]  # the stored answer to the first send, not a new task
    await page.clock.resume()
    await page.reload()
    await expect(page.locator("#tasks .title")).to_have_text(["only once"])


async def test_a_write_without_an_idempotency_key_is_never_sent_twice(
    example: tuple[str, str], context: BrowserContext
) -> None:
    web, api = example
    page = await context.new_page()
    await page.clock.install()
    await _sign_up(page, web, "grace@example.com")
    await _add(page, "draft")

    async def unavailable(route: Route) -> None:
        await _unavailable(route, retry_after="1")

    await page.route(f"{api}/api/*/tasks/*", unavailable)
    await _pause_clock(page)
    await page.locator("#tasks li", has_text="draft").get_by_role("button", name="Rename").click()
    await page.get_by_label("New title for draft").fill("final")
    await page.get_by_label("New title for draft").press("Enter")
    await page.wait_for_function("window.apiCalls.some((call) => call.status === 503)")
    await page.clock.run_for(10_000)  # far past any Retry-After and jitter

    # A PUT may have been applied before its answer was lost: it is not sent again.
    puts = [call for call in await _api_calls(page) if call["method"] == "PUT"]
    assert [call.get("status") for call in puts] == [503]  # None: a second one in flight
    await expect(page.locator("#error")).to_contain_text("The database is unavailable.")
    await expect(page.locator("#error")).to_contain_text("(request id ")
