"""The demo page and the browser client in real headless Chromium (Debian's, driven by Playwright).

Playwright's sync API runs in a worker thread while the gateway runs on the test's event loop.
Screenshots of failing pages are saved under test-artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
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


async def in_browser(scenario: str, url: str, home: str | None = None) -> dict[str, str]:
    """Run a browser scenario in its own process (tests/browser_driver.py); screenshots on failure."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.browser_driver",
        scenario,
        url,
        *([home] if home else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).parent.parent),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    lines = out.decode().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": err.decode()[-2000:]}
    return result


async def test_demo_page_signs_in_echoes_and_renews_without_reconnecting(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    port = gw.port_of("demo")
    result = await in_browser("renewal", f"http://127.0.0.1:{port}/")
    log = result.get("secure", result.get("error", ""))
    assert "< Hello from a signed-in user" in log
    assert log.count("session valid until") >= 2  # renewed in place
    assert "closed:" not in log


async def test_bad_credentials_show_a_clear_error(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))

    result = await in_browser("bad-credentials", f"http://127.0.0.1:{gw.port_of('demo')}/")
    assert "error" not in result, result
    words = "sign-in refused: wrong user name or password"
    assert words in result["secure"] and result["alert"].startswith(words)  # in the log and next to the form
    assert "HTTP" not in result["secure"]
    assert result["session"] == "signed out" and result["buttons"] == {"login": True, "logout": False}


async def test_sign_in_and_sign_out_are_enabled_only_when_they_make_sense(start_gateway, site, tmp_path, monkeypatch):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    screenshot = tmp_path / "demo.png"
    monkeypatch.setenv("WSGATE_TEST_SCREENSHOT", str(screenshot))
    result = await in_browser("sign-in-states", f"http://127.0.0.1:{gw.port_of('demo')}/")
    assert "error" not in result, result
    assert result["states"] == {
        "before": {"login": True, "logout": False},
        "signed in": {"login": False, "logout": True},
        "signed out": {"login": True, "logout": False},
    }
    assert "closed: 1008 (policy) logged out" in result["secure"]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000


async def test_the_next_commands_can_be_copied(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    result = await in_browser("copy", f"http://127.0.0.1:{gw.port_of('demo')}/")
    assert "error" not in result, result
    assert result["copied"] == [
        {"label": "Copied", "clipboard": "wsgate default-config mygateway/"},
        {"label": "Copied", "clipboard": "wsgate check-config mygateway/gateway.yaml"},
        {"label": "Copied", "clipboard": "wsgate run mygateway/gateway.yaml"},
    ]


def test_the_demo_page_makes_no_request_elsewhere():
    """One self-contained page: no stylesheet, font, image or script from another origin."""
    page = (WEB / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "//fonts" not in page
    assert "<link" not in page and "<img" not in page and "src=" not in page


async def test_a_disallowed_origin_is_refused(start_gateway, site):
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    port = gw.port_of("demo")

    # The page comes from http://localhost:PORT but talks to ws://127.0.0.1:PORT: another origin.
    url = f"http://localhost:{port}/?gateway=ws://127.0.0.1:{port}"
    result = await in_browser("origin", url)
    assert "error" not in result, result
    assert "connection refused or failed" in result["echo"] and "connected to" not in result["echo"]
    assert "sign-in failed: the gateway did not answer" in result["secure"]


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
    result = await in_browser("echo", f"https://127.0.0.1:{gw.port_of('demo')}/", str(home))
    assert "error" not in result, result
    assert "connected to wss://127.0.0.1:" in result["secure"] and "< typed in Chromium" in result["secure"]
    # The same page without the CA in Chromium's trust store does not even load: the chain is really checked.
    untrusted = await in_browser("echo", f"https://127.0.0.1:{gw.port_of('demo')}/", str(tmp_path))
    assert "ERR_CERT_AUTHORITY_INVALID" in untrusted.get("error", "")


async def test_the_docs_browser_example_runs(start_gateway, site):
    import re

    snippet = re.findall(r"```js\n(.*?)```", (Path(__file__).parent.parent / "docs" / "clients.md").read_text(), re.S)[
        0
    ]
    (site / "web" / "example.html").write_text(f'<!doctype html><script type="module">\n{snippet}\n</script>')
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    result = await in_browser("console", f"http://127.0.0.1:{gw.port_of('demo')}/example.html")
    log = result.get("console", result.get("error", ""))
    assert "signed in as joe" in log and "hello" in log and "closed 1008 logged out" in log


def logins(gw, realm: str, module: str) -> int:
    """How often the realm's login chain ran: twice per sign-in POST (a bare attempt, then credentials)."""
    sample = gw.runtime.metrics.registry.get_sample_value(
        "wsgate_auth_seconds_count", {"realm": realm, "module": module}
    )
    return int(sample or 0)


def page_script(site: Path, name: str, handler: str, body: str) -> None:
    """A page that connects to secure-echo with the default refreshMargin and runs ``body``."""
    (site / "web" / name).write_text(
        '<!doctype html><script type="module">\n'
        'import { connect, BasicChallengeHandler, TokenChallengeHandler } from "/.wsgate/client.js";\n'
        f"const handler = {handler};\n"
        "let sessions = 0;\n"
        "const url = `ws://${location.host}/secure-echo`;\n"
        "const socket = await connect(url, { challengeHandler: handler, onsession: () => sessions++,\n"
        "  onerror: (error) => console.log(`renewal failed: ${error.message}`),\n"
        "  onclose: (e) => console.log(`closed ${e.code} after ${sessions} sign-ins`),\n"
        "  onmessage: (e) => console.log(`echo ${e.data}`) });\n"
        f"{body}\n</script>"
    )


async def test_a_deadline_inside_the_default_margin_is_renewed_at_a_bounded_rate(start_gateway, site):
    # authorization-timeout 7 s < the default 30 s margin: before the fix every renewal was due at once
    page_script(
        site,
        "margin.html",
        'new BasicChallengeHandler(async () => ({ user: "joe", password: "welcome" }))',
        "setTimeout(() => socket.send('after 9 s'), 9000);\nsetTimeout(() => socket.close(), 9500);",
    )
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    result = await in_browser("until-closed", f"http://127.0.0.1:{gw.port_of('demo')}/margin.html")
    log = result.get("console", result.get("error", ""))
    assert "echo after 9 s" in log, log  # renewed in time: still open past the first 7 s deadline
    sign_ins = logins(gw, "demo", "file") // 2
    assert 2 <= sign_ins <= 3, log  # sign-in, then one renewal per ~2/3 of 7 s


async def test_a_failed_renewal_is_retried_with_backoff(start_gateway, site):
    # the first renewal's handler fails (a password manager still locked); the retry keeps the connection
    handler = """new BasicChallengeHandler(async () => {
      window.asked = (window.asked || 0) + 1;
      if (window.asked === 2) throw new Error("password manager locked");
      return { user: "joe", password: "welcome" };
    })"""
    body = "setTimeout(() => socket.send('after 9 s'), 9000);\nsetTimeout(() => socket.close(), 9500);"
    page_script(site, "retry.html", handler, body)
    gw = await start_gateway(CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:"))
    result = await in_browser("until-closed", f"http://127.0.0.1:{gw.port_of('demo')}/retry.html")
    log = result.get("console", result.get("error", ""))
    assert log.count("renewal failed: password manager locked") == 1, log
    assert "echo after 9 s" in log, log  # retried before the 7 s deadline
    assert logins(gw, "demo", "file") <= 2 * 4, log  # sign-in, the failed renewal's bare POST, the retry (+1)


async def test_a_renewal_that_does_not_move_the_deadline_is_not_repeated(start_gateway, site, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from .test_client import KEY, token

    (tmp_path / "issuer.pem").write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = CONFIG.format(scheme="http", ws="ws", bind="tcp.bind", security="security:")
    config = config.replace(
        """      http-challenge-scheme: Application Basic
      authorization-mode: recycle
      authorization-timeout: 7s
      login-modules:
        login-module:
          type: file
          options:
            file: jaas-config.xml""",
        """      http-challenge-scheme: Application Token
      authorization-mode: recycle
      login-modules:
        login-module:
          type: jwt
          options:
            key-file: issuer.pem
            issuer: https://issuer.test
            audience: wsgate
            algorithms: ES256
            leeway: 0s""",
    ).replace("require-role: AUTHORIZED", "require-role: USER")
    # the only token the page has expires in 4 s: renewing with it cannot move the deadline
    page_script(site, "fixed-token.html", f'new TokenChallengeHandler(async () => "{token(exp_in=4)}")', "")
    gw = await start_gateway(config)
    result = await in_browser("until-closed", f"http://127.0.0.1:{gw.port_of('demo')}/fixed-token.html")
    log = result.get("console", result.get("error", ""))
    assert "closed 1008" in log, log  # the gateway ends it at the token's exp
    assert logins(gw, "demo", "jwt") // 2 <= 2, log  # sign-in and at most one renewal for that deadline


async def test_management_console_shows_sessions_live_and_closes_one(start_gateway, tmp_path, http, monkeypatch):
    from .test_management import GATEWAY, JOE, USERS

    (tmp_path / "jaas-config.xml").write_text(USERS)
    gw = await start_gateway(GATEWAY)
    joe = await http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo", headers=JOE)
    monkeypatch.setenv("WSGATE_TEST_CREDENTIALS", "root:t0ps3cret")
    result = await in_browser("admin-console", f"http://127.0.0.1:{gw.port_of('admin')}/admin/")
    assert "error" not in result, result
    assert result["status"] in ("live", "polling")
    msg = await asyncio.wait_for(joe.receive(), 3)
    assert msg.type.name == "CLOSE" and msg.data == 1008 and msg.extra == "closed by administrator"
    assert not gw.runtime.connections  # the only session is gone


async def test_management_console_charts_traffic_as_it_happens(start_gateway, tmp_path, http, monkeypatch):
    from .test_management import GATEWAY, JOE, USERS, basic

    (tmp_path / "jaas-config.xml").write_text(USERS)
    gw = await start_gateway(GATEWAY)
    echo = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    stop = asyncio.Event()

    async def traffic() -> None:
        """Two connections that stay, one that comes and goes, messages, and a refused login, twice a second."""
        steady = [await http.ws_connect(echo, headers=JOE) for _ in range(2)]
        try:
            while not stop.is_set():
                async with http.ws_connect(echo, headers=JOE) as ws:
                    for text in ("tick", "tock"):
                        await ws.send_str(text)
                        await ws.receive()
                for ws in steady:
                    await ws.send_str("x" * 100)
                    await ws.receive()
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await http.ws_connect(echo, headers=basic("joe", "wrong"))
                await asyncio.sleep(0.5)
        finally:
            for ws in steady:
                await ws.close()

    screenshot = tmp_path / "console.png"
    monkeypatch.setenv("WSGATE_TEST_CREDENTIALS", "root:t0ps3cret")
    monkeypatch.setenv("WSGATE_TEST_SCREENSHOT", str(screenshot))
    running = asyncio.create_task(traffic())
    try:
        result = await in_browser("console-charts", f"http://127.0.0.1:{gw.port_of('admin')}/admin/")
    finally:
        stop.set()
        await running
    assert "error" not in result, result
    for chart in ("connections", "handshakes", "messages", "bytes", "auth"):
        drawn = result[chart]
        assert drawn["canvases"] >= 1 and int(drawn["points"]) >= 2, (chart, drawn)
    assert "echo" in result["connections"]["filled"].split()
    assert {"101", "403"} <= set(result["handshakes"]["filled"].split())
    assert {"echo/in", "echo/out"} <= set(result["messages"]["filled"].split())
    assert {"p50", "p95"} <= set(result["auth"]["filled"].split())
    assert "403 refused" in result["handshakes"]["legend"] and "echo in" in result["bytes"]["legend"]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000
