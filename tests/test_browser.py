"""The demo page and the browser client in real headless Chromium (Debian's, driven by Playwright).

Playwright's sync API runs in a worker thread while the gateway runs on the test's event loop.
Screenshots of failing pages are saved under test-artifacts/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
WEB = Path(__file__).parent.parent / "src" / "wsgate" / "resources" / "web"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed (make test installs it)"
)

CONFIG = """
service:
  - name: demo
    accept: [{scheme}://127.0.0.1:0/, {scheme}://localhost:0/]
    type: directory
    properties:
      directory: web
      welcome-file: index.html
    accept-options:
      {bind}: 127.0.0.1:0
  - name: echo
    accept: {ws}://127.0.0.1:0/echo
    type: echo
    accept-options:
      {bind}: 127.0.0.1:0
  - name: secure-echo
    accept: {ws}://127.0.0.1:0/secure-echo
    type: echo
    realm-name: demo
    authorization-constraint:
      require-role: AUTHORIZED
    accept-options:
      {bind}: 127.0.0.1:0
{security}
  realm:
    name: demo
    authentication:
      http-challenge-scheme: Application Basic
      authorization-mode: recycle
      authorization-timeout: 7s
      login-modules:
        login-module:
          type: file
          options:
            file: jaas-config.xml
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    shutil.copytree(WEB, tmp_path / "web")
    shutil.copy(WEB.parent / "jaas-config.xml", tmp_path / "jaas-config.xml")
    return tmp_path


def browse(url: str, script: Callable, home: str | None = None, name: str = "page") -> object:
    """Open ``url`` in headless Chromium and run ``script(page)``; screenshot on failure."""
    from playwright.sync_api import sync_playwright

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
        page = browser.new_page()
        try:
            page.goto(url)
            return script(page)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
            raise
        finally:
            browser.close()


def sign_in_and_echo(page, wait_renewal: bool = False) -> str:
    page.click("#login")
    page.wait_for_selector("#secure-log .in", timeout=10000)
    if wait_renewal:  # authorization-timeout 7 s, renewal 5 s early: past 8 s only renewals keep it open
        page.wait_for_timeout(8500)
    page.fill("#secure-message", "typed in Chromium")
    page.click("#secure-send")
    page.wait_for_function(
        "document.getElementById('secure-log').textContent.includes('< typed in Chromium')", timeout=10000
    )
    return page.text_content("#secure-log")


async def test_demo_page_signs_in_echoes_and_renews_without_reconnecting(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    port = gw.port_of("demo")
    log = await asyncio.to_thread(
        browse, f"http://127.0.0.1:{port}/", lambda p: sign_in_and_echo(p, True), None, "renewal"
    )
    assert "< Hello from a signed-in user" in log
    assert log.count("session valid until") >= 2  # renewed in place
    assert "closed:" not in log


async def test_bad_credentials_show_a_clear_error(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))

    def script(page) -> str:
        page.fill("#password", "nope")
        page.click("#login")
        page.wait_for_selector("#secure-log .error", timeout=10000)
        return page.text_content("#secure-log")

    log = await asyncio.to_thread(browse, f"http://127.0.0.1:{gw.port_of('demo')}/", script, None, "bad-credentials")
    assert "sign-in failed: sign-in refused: HTTP 403" in log


async def test_a_disallowed_origin_is_refused(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    port = gw.port_of("demo")

    def script(page) -> tuple[str, str]:
        page.wait_for_selector("#echo-log .error", timeout=10000)  # the open echo refuses the foreign Origin
        page.click("#login")
        page.wait_for_selector("#secure-log .error", timeout=10000)
        return page.text_content("#echo-log"), page.text_content("#secure-log")

    # The page comes from http://localhost:PORT but talks to ws://127.0.0.1:PORT: another origin.
    url = f"http://localhost:{port}/?gateway=ws://127.0.0.1:{port}"
    echo_log, secure_log = await asyncio.to_thread(browse, url, script, None, "origin")
    assert "connection refused or failed" in echo_log and "connected to" not in echo_log
    assert "sign-in failed" in secure_log


@pytest.mark.skipif(shutil.which("certutil") is None and not os.environ.get("CI"), reason="certutil not installed")
async def test_demo_page_over_wss_with_a_private_ca(start_gateway, site, ca, pem_stores, tmp_path):
    from .conftest import SECURITY_PEM

    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(
        [
            "certutil",
            "-d",
            f"sql:{nssdb}",
            "-A",
            "-n",
            "wsgate-test-ca",
            "-t",
            "C,,",
            "-i",
            str(pem_stores["truststore"]),
        ],
        check=True,
    )
    gw = await start_gateway(CONFIG.format(scheme="https", ws="wss", bind="ssl.bind", security=SECURITY_PEM.rstrip()))
    log = await asyncio.to_thread(
        browse, f"https://127.0.0.1:{gw.port_of('demo')}/", sign_in_and_echo, str(home), "wss"
    )
    assert "connected to wss://127.0.0.1:" in log and "< typed in Chromium" in log
    # The same page without the CA in Chromium's trust store does not even load: the chain is really checked.
    from playwright.sync_api import Error as PlaywrightError

    with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
        await asyncio.to_thread(
            browse, f"https://127.0.0.1:{gw.port_of('demo')}/", sign_in_and_echo, str(tmp_path), "untrusted"
        )
