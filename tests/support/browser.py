"""Debian's Chromium driven by Playwright (the PyPI package), for the console's browser tests.

Playwright's own browser download cannot work here, so the tests launch /usr/bin/chromium (installed by
.ci/run from Debian's `chromium` package): headless, no sandbox (CI runs as root), and with Chromium's
background networking off (this machine's closed network refuses it, noisily). Every page opened through
`open_page` records its console errors and uncaught exceptions; `page_errors` fails a test that saw any.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium browser (skips the test where Debian's package is not installed)."""
    if shutil.which(CHROMIUM) is None:
        missing_tool(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def missing_tool(reason: str) -> None:
    """A system tool a test starts is absent: a skip on a developer's machine, a failure in CI (.ci/run sets
    KLEINSERVE_CI=1 after installing every tool, so no test is silently skipped there)."""
    if os.environ.get("KLEINSERVE_CI") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class PageErrors(list):
    """Console errors and uncaught exceptions of one page, as strings."""

    def check(self) -> None:
        assert not self, "the page logged errors:\n" + "\n".join(self)


def open_page(browser, url: str, **context_options):
    """A new page in its own context, navigated to `url`, with its errors collected in `page.errors`."""
    context = browser.new_context(accept_downloads=True, **context_options)
    page = context.new_page()
    errors = PageErrors()
    page.on("console", lambda message: message.type == "error" and errors.append(f"console: {message.text}"))
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.errors = errors
    page.goto(url)
    return page
