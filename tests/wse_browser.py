"""Chromium pages for the WSE client tests, in a process of their own (Playwright's sync API).

Usage: python -m tests.wse_browser SCENARIO URL; prints the scenario's result as JSON.
- ``console``: what the page logs to the console until it logs a line starting with "done" (40 s);
- ``demo``: the demo page: the open echo connects, Sign in, a typed message comes back; the transports shown.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from playwright.sync_api import Page, sync_playwright

from .browser_driver import CHROMIUM


def console(page: Page, lines: list[str]) -> dict[str, Any]:
    for _ in range(400):
        if any(line.startswith("done") for line in lines):
            break
        page.wait_for_timeout(100)
    return {"console": lines}


def demo(page: Page, lines: list[str]) -> dict[str, Any]:
    page.wait_for_selector("#echo-log >> text=connected to", timeout=15000)
    page.click("#login")
    page.wait_for_selector("#secure-log .in", timeout=15000)
    page.fill("#secure-message", "typed in Chromium")
    page.click("#secure-send")
    page.wait_for_selector("#secure-log >> text=< typed in Chromium", timeout=10000)
    return {
        box: page.text_content(f"#{box}") or ""
        for box in ("echo-log", "echo-transport", "secure-log", "secure-transport", "session")
    }


SCENARIOS = {"console": console, "demo": demo}


def main(scenario: str, url: str) -> int:
    lines: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        try:
            page = browser.new_context().new_page()
            page.on("console", lambda message: lines.append(message.text))
            page.goto(url)
            result = SCENARIOS[scenario](page, lines)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "console": lines}
        finally:
            browser.close()
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
