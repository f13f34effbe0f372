"""`make e2e`: the example web client (examples/web-client) in a real Chromium, against the real
API and a real Better Auth, started by the same launcher `make example` runs.

A person's story: sign up, add three tasks, toggle one, rename one, delete one, reload and find
the same state; a refused request shows the API's sentence; a second person in another browser
context sees none of it. The page's JWT handling is driven for real too: a token rejected with
401 is replaced and the request retried once, and an expired one is replaced before use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "examples" / "web-client" / "run.py"
ARTIFACTS = ROOT / "test-results" / "e2e"
PASSWORD = "correct horse battery staple"


def test_the_readme_shows_the_client_code_the_page_runs() -> None:
    code = (ROOT / "examples" / "web-client" / "public" / "todo-api.js").read_text()
    assert f"```js\n{code}```" in (ROOT / "README.md").read_text()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback)
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`make example` on free ports and a throwaway data directory: (page origin, API origin)."""
    web_port, api_port = _free_port(), _free_port()
    workdir = tmp_path_factory.mktemp("web-client")
    log = (workdir / "example.log").open("w")
    env = {**os.environ, "WEB_PORT": str(web_port), "API_PORT": str(api_port)}
    env |= {"DATA_DIR": str(workdir / "data"), "BETTER_AUTH_SECRET": "e2e-" + "s" * 40}
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(LAUNCHER)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    web, api = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 120
    while not (_answers(web) and _answers(f"{api}/readyz")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the example did not start:\n" + (workdir / "example.log").read_text())
        time.sleep(0.3)
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


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context()
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
    bobs_context = await browser.new_context()
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
    token_fetches: list[str] = []
    page.on(
        "request", lambda r: token_fetches.append(r.url) if "/api/auth/token" in r.url else None
    )

    await _add(page, "with the first token")
    assert token_fetches == []  # the JWT from sign-in is still good
    await page.clock.fast_forward("16:00")  # Better Auth's JWTs live 15 minutes
    await _add(page, "with a new token")
    assert len(token_fetches) == 1
