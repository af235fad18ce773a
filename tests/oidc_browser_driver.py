"""Drives Debian's Chromium through OpenID Connect sign-in at the gateway, in its own process
(tests/test_oidc_browser.py runs it).

Usage: python -m tests.oidc_browser_driver URL HOME USER PASSWORD

``HOME`` holds an NSS database that trusts the tests' CA (gateway and provider certificates). The driver
prints one JSON line per phase and, where the test must act (a back-channel logout, revoking refresh
tokens), waits for a line on stdin before it watches what the page sees:

1. ``signed-in``: the demo page's "Sign in with the provider", the provider's form, back to the page; the
   page's protected echo plus WebSockets to /one and /two, opened with the session cookie alone;
2. ``refreshed``: after the tokens' lifetime, the same sockets still open and echoing (no reconnect);
3. ``logged-out`` (after stdin): the close codes and how long after the test's signal they came;
4. ``signed-in-again`` then ``refused`` (after stdin): the same with a refresh the provider refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPEN_SOCKETS = """async () => {
  const base = location.origin.replace(/^http/, "ws");
  window.closes = [];
  window.sockets = {};
  const results = {};
  for (const name of ["one", "two"]) {
    const socket = new WebSocket(`${base}/${name}`);
    window.sockets[name] = socket;
    socket.onclose = (event) => window.closes.push({ name, code: event.code, at: performance.now() });
    results[name] = await new Promise((done) => {
      socket.onopen = () => socket.send(`hello ${name}`);
      socket.onmessage = (event) => done(event.data);
      socket.onerror = () => done("error");
    });
  }
  return results;
}"""
ECHO_AGAIN = """async () => {
  const results = {};
  for (const [name, socket] of Object.entries(window.sockets)) {
    if (socket.readyState !== WebSocket.OPEN) { results[name] = `state ${socket.readyState}`; continue; }
    results[name] = await new Promise((done) => {
      socket.onmessage = (event) => done(event.data);
      socket.send(`again ${name}`);
    });
  }
  return results;
}"""


def emit(phase: str, **data: Any) -> None:
    print(json.dumps({"phase": phase, **data}), flush=True)


def sign_in(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.wait_for_selector("#oidc-login:visible", timeout=10000)
    page.click("#oidc-login")
    page.wait_for_selector("#username", timeout=10000)
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_function("document.getElementById('session').textContent.startsWith('signed in as')", timeout=10000)
    page.wait_for_function(
        "document.getElementById('secure-log').textContent.includes('< Hello from a signed-in user')", timeout=10000
    )


def what_the_page_holds(page: Page, context: BrowserContext) -> dict[str, Any]:
    return {
        "content": page.content(),
        "document_cookie": page.evaluate("document.cookie"),
        "cookies": [
            {k: c.get(k) for k in ("name", "value", "httpOnly", "secure", "sameSite", "domain")}
            for c in context.cookies()
        ],
        "url": page.url,
        "session": page.text_content("#session"),
    }


def wait_closes(page: Page, count: int, seconds: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        closes: list[dict[str, Any]] = page.evaluate("window.closes")
        if len(closes) >= count:
            return closes
        page.wait_for_timeout(50)
    return page.evaluate("window.closes")  # type: ignore[no-any-return]


def main(url: str, home: str, user: str, password: str, wait: str = "9") -> int:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, env={**os.environ, "HOME": home}, args=ARGS
        )
        context = browser.new_context()
        page = context.new_page()
        try:
            sign_in(page, url, user, password)
            emit("signed-in", echoes=page.evaluate(OPEN_SOCKETS), **what_the_page_holds(page, context))
            page.wait_for_timeout(float(wait) * 1000)  # longer than the tokens live: refreshed meanwhile
            emit("refreshed", echoes=page.evaluate(ECHO_AGAIN), closes=page.evaluate("window.closes"))
            sys.stdin.readline()  # the test sends the back-channel logout now
            started = page.evaluate("performance.now()")
            closes = wait_closes(page, 2, 5)
            emit("logged-out", closes=[{**c, "after": (c["at"] - started) / 1000} for c in closes])
            sign_in(page, url, user, password)
            emit("signed-in-again", echoes=page.evaluate(OPEN_SOCKETS))
            sys.stdin.readline()  # the test revokes the refresh tokens now
            emit("refused", closes=wait_closes(page, 2, 15), log=page.text_content("#secure-log"))
        except Exception as exc:
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                page.screenshot(path=str(ARTIFACTS / "oidc-sign-in.png"), timeout=5000)
            except Exception:  # a page that never loaded may not be capturable; the error below still counts
                pass
            emit("error", error=f"{type(exc).__name__}: {exc}", url=page.url)
            return 1
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
