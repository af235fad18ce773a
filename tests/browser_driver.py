"""Drives Debian's Chromium with Playwright in its own process (tests/test_browser.py runs it).

A separate process keeps Playwright's event loop and threads away from the gateway's loop.
Usage: python -m tests.browser_driver SCENARIO URL [HOME]; prints the scenario's result as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


def sign_in_and_echo(page: Page, wait_renewal: bool = False) -> dict[str, str]:
    page.click("#login")
    page.wait_for_selector("#secure-log .in", timeout=10000)
    if wait_renewal:  # authorization-timeout 7 s, renewal 5 s early: past 8 s only renewals keep it open
        page.wait_for_timeout(8500)
    page.fill("#secure-message", "typed in Chromium")
    page.click("#secure-send")
    page.wait_for_function(
        "document.getElementById('secure-log').textContent.includes('< typed in Chromium')", timeout=10000
    )
    return {"secure": page.text_content("#secure-log") or ""}


def renewal(page: Page) -> dict[str, str]:
    return sign_in_and_echo(page, wait_renewal=True)


def screenshot(page: Page) -> None:
    """Save the page where the test asked (WSGATE_TEST_SCREENSHOT), if it asked."""
    if path := os.environ.get("WSGATE_TEST_SCREENSHOT"):
        page.screenshot(path=path, full_page=True)


def buttons(page: Page) -> dict[str, bool]:
    """Which of the sign-in buttons are enabled."""
    return {name: page.is_enabled(f"#{name}") for name in ("login", "logout")}


def bad_credentials(page: Page) -> dict[str, object]:
    page.fill("#password", "nope")
    page.click("#login")
    page.wait_for_selector("#secure-log .error", timeout=10000)
    page.wait_for_selector("#login:enabled", timeout=5000)
    return {
        "secure": page.text_content("#secure-log") or "",
        "alert": page.text_content("#login-error") or "",
        "session": page.text_content("#session") or "",
        "buttons": buttons(page),
    }


def sign_in_states(page: Page) -> dict[str, object]:
    """Sign in is enabled only while signed out, Sign out only while signed in."""
    states = {"before": buttons(page)}
    page.click("#login")
    page.wait_for_selector("#secure-log .in", timeout=10000)
    states["signed in"] = buttons(page)
    screenshot(page)
    page.click("#logout")
    page.wait_for_selector("#secure-log >> text=logged out", timeout=10000)
    page.wait_for_selector("#login:enabled", timeout=5000)
    states["signed out"] = buttons(page)
    return {"states": states, "secure": page.text_content("#secure-log") or ""}


def copy_commands(page: Page) -> dict[str, object]:
    """Each "Next" command has a Copy button that puts exactly that command on the clipboard."""
    copied = []
    for button in page.query_selector_all("#next button.copy"):
        button.click()
        page.wait_for_function("(b) => b.textContent !== 'Copy'", arg=button, timeout=5000)
        copied.append({"label": button.text_content(), "clipboard": page.evaluate("navigator.clipboard.readText()")})
    return {"copied": copied}


def foreign_origin(page: Page) -> dict[str, str]:
    page.wait_for_selector("#echo-log .error", timeout=10000)  # the open echo refuses the foreign Origin
    page.click("#login")
    page.wait_for_selector("#secure-log .error", timeout=10000)
    return {"echo": page.text_content("#echo-log") or "", "secure": page.text_content("#secure-log") or ""}


def console(page: Page) -> dict[str, str]:
    """Collect what the page logs to the console until it logs "closed" (a docs example runs in it)."""
    lines: list[str] = []
    page.on("console", lambda message: lines.append(message.text))
    page.reload()
    page.wait_for_function("true")
    for _ in range(100):
        if any(line.startswith("closed") for line in lines):
            break
        page.wait_for_timeout(100)
    return {"console": "\n".join(lines)}


LOADED: list[str] = []  # the console since the first load (main() listens before page.goto)


def until_closed(page: Page) -> dict[str, str]:
    """The console of a page loaded once (its requests counted at the gateway) until it logs "closed" (20 s)."""
    for _ in range(200):
        if any(line.startswith("closed") for line in LOADED):
            break
        page.wait_for_timeout(100)
    return {"console": "\n".join(LOADED)}


def admin_console(page: Page) -> dict[str, str]:
    """The management console lists joe's session live; its Close button ends it."""
    row = page.wait_for_selector("#sessions tbody tr:has-text('joe')", timeout=10000)
    assert row is not None
    session_id = row.get_attribute("data-id") or ""
    row.query_selector("button").click()
    # The console's CSP forbids eval, so no wait_for_function: wait for the row to go.
    page.wait_for_selector(f"#sessions tbody tr[data-id='{session_id}']", state="detached", timeout=10000)
    return {"closed": session_id, "status": page.text_content("#status") or ""}


CHARTS = ("connections", "handshakes", "messages", "bytes", "auth")


def console_charts(page: Page) -> dict[str, object]:
    """The management console's charts fill up as the test's traffic runs (selectors, not eval: CSP)."""
    # data-filled: the keys of a chart's series that drew a value above zero (console.html sets it)
    for chart, key in (
        ("connections", "echo"),
        ("handshakes", "101"),
        ("handshakes", "403"),
        ("messages", "echo/in"),
        ("messages", "echo/out"),
        ("bytes", "echo/in"),
        ("auth", "p50"),
        ("auth", "p95"),
    ):
        page.wait_for_selector(f"#chart-{chart}[data-filled~='{key}']", timeout=20000)
    for _ in range(100):  # a few more samples (a second apart at first) for the screenshot
        if int(page.get_attribute("#chart-auth", "data-points") or 0) >= 6:
            break
        page.wait_for_timeout(200)
    screenshot(page)
    return {
        chart: {
            "canvases": len(page.query_selector_all(f"#chart-{chart} canvas")),
            "points": page.get_attribute(f"#chart-{chart}", "data-points"),
            "filled": page.get_attribute(f"#chart-{chart}", "data-filled"),
            "legend": page.text_content(f"#chart-{chart} .u-legend"),
        }
        for chart in CHARTS
    }


SCENARIOS = {
    "admin-console": admin_console,
    "console-charts": console_charts,
    "console": console,
    "echo": sign_in_and_echo,
    "renewal": renewal,
    "until-closed": until_closed,
    "bad-credentials": bad_credentials,
    "sign-in-states": sign_in_states,
    "copy": copy_commands,
    "origin": foreign_origin,
}


def main(scenario: str, url: str, home: str | None = None) -> int:
    env = {**os.environ, "HOME": home} if home else None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            env=env,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        credentials = os.environ.get("WSGATE_TEST_CREDENTIALS")  # user:password for HTTP authentication
        options: dict[str, Any] = {
            "color_scheme": os.environ.get("WSGATE_TEST_COLOR_SCHEME", "light"),
            "permissions": ["clipboard-read", "clipboard-write"],  # the demo page's Copy buttons
        }
        if credentials:
            user, _, password = credentials.partition(":")
            options["http_credentials"] = {"username": user, "password": password}
        page = browser.new_context(**options).new_page()
        page.on("console", lambda message: LOADED.append(message.text))
        try:
            page.goto(url)
            result = SCENARIOS[scenario](page)
        except Exception as exc:
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / f"{scenario}.png"), timeout=5000)
            except Exception:  # a page that never loaded may not be capturable; the error below still counts
                pass
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            return 1
        finally:
            browser.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
