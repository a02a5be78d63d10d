"""Screenshots of the console for the README, from a live `kleinserve serve --demo` in Debian's Chromium.

    .venv/bin/python docs/screenshots.py        # writes docs/playground.png

The demo model's images are noise (tiny random weights); the page around them is what the shots show.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

from support.browser import chromium, open_page  # noqa: E402
from support.live_server import LiveServer  # noqa: E402

VIEWPORT = {"width": 1360, "height": 1180}


def playground(browser, server: LiveServer) -> None:
    page = open_page(browser, server.url + "/", viewport=VIEWPORT)
    page.wait_for_selector("body[data-ready]", state="attached")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk, oil painting")
    page.get_by_label("Size").select_option("custom")
    page.get_by_label("Width").fill("384")
    page.get_by_label("Height").fill("256")
    page.get_by_label("Number of images").fill("2")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("region", name="Results").locator("img").nth(1).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#result-list img')].every((img) => img.complete)"
    )
    page.screenshot(path=DOCS / "playground.png", full_page=True)
    page.errors.check()


def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        server = LiveServer(Path(data), "--demo")
        with server, chromium() as browser:
            playground(browser, server)
    print(f"wrote {DOCS / 'playground.png'}")


if __name__ == "__main__":
    main()
