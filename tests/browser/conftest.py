"""Chromium (Debian's, at /usr/bin/chromium) driven by Playwright against a whole platform, with
a fresh profile per test; every page a test visits is written under tests/browser/artifacts/."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from infra.supervisor import Platform
from tests.e2e.conftest import TOKEN, running_platform

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
PASSWORD = "correct horse battery staple"

# A page waits on the platform (builds, the log folder): more than Playwright's 5 s default.
expect.set_options(timeout=20_000)


@dataclass
class Admin:
    """The management API as the admin (setting up users and sources a test starts from)."""

    session: aiohttp.ClientSession
    url: str

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str = TOKEN, raw: bytes | None = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if raw is not None:
            headers["Content-Type"] = "application/gzip"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as answer:
            text = await answer.text()
            assert answer.status < 300, f"{method} {path}: {answer.status} {text}"
            return json.loads(text) if text else None

    async def user(self, name: str) -> str:
        """A user with the test's password; their API key."""
        key = str((await self.call("POST", "/v1/users", {"name": name, "email": f"{name}@example.org"}))["key"]["key"])
        await self.call("PUT", "/v1/me/password", {"password": PASSWORD}, key=key)
        return key

    async def source(self, name: str, code: str, key: str) -> None:
        """A registered source named `name` holding predict.py."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            data = code.encode()
            info = tarfile.TarInfo("predict.py")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        await self.call("POST", f"/v1/sources?name={name}", key=key, raw=buffer.getvalue())


@pytest.fixture
async def platform(settings: Any) -> AsyncIterator[Platform]:
    """The whole platform, as the e2e tests start it."""
    async with running_platform(settings) as running:
        yield running


@pytest.fixture
async def admin(platform: Platform) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, platform.settings.api_url)


Browsers = Callable[[str], Awaitable[BrowserContext]]


@pytest.fixture
async def browsers(tmp_path: Path) -> AsyncIterator[Browsers]:
    """Opens a browser of its own (a fresh user-data-dir) per user, at 1280 px; all closed at the end."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make test` installs it (apt-get install chromium)")
    # Uncaught errors of the pages' scripts: a test with any fails, naming them.
    errors: list[str] = []
    async with async_playwright() as p, contextlib.AsyncExitStack() as stack:

        async def new(who: str) -> BrowserContext:
            opened = await p.chromium.launch_persistent_context(
                str(tmp_path / f"chromium-{who}"),
                executable_path=str(CHROMIUM),
                args=ARGS,
                headless=True,
                viewport={"width": 1280, "height": 900},
            )
            stack.push_async_callback(opened.close)
            opened.on("weberror", lambda error: errors.append(f"{who}: {error.error}"))
            return opened

        yield new
    assert not errors, f"the dashboard's scripts failed: {errors}"


# Controls a screen reader could not name: no <label>, no aria-label, no text of their own.
UNNAMED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
  .map(e => e.outerHTML.slice(0, 160))"""


async def shot(page: Page, name: str) -> None:
    """The page as the user sees it now, kept under tests/browser/artifacts/ (ignored by git); and
    every control on it has a label."""
    unnamed = await page.evaluate(UNNAMED)
    assert not unnamed, f"controls without a label on {name}: {unnamed}"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
