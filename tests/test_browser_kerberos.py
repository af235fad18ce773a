"""Kerberos single sign-on in a real browser: headless Chromium (Debian's, driven by Playwright) opens a
Negotiate-protected wss:// echo with the user's ticket cache, with no prompt and no password.

The page and the WebSocket share one https://localhost listener: Chromium sends ambient credentials
(Negotiate) only to a same-site WebSocket host. The gateway's audit log shows who the browser proved
to be, so a refusal is known to be the gateway's decision, not a browser that never tried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import SECURITY_PEM
from .kdc import REALM, Kdc, realm_yaml

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CERTUTIL = shutil.which("certutil")
ROOT = Path(__file__).parent.parent


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return "chromium not installed (make test installs it)"
    if CERTUTIL is None:
        return "certutil not installed (libnss3-tools; make test installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None and not os.environ.get("CI"), reason=str(_missing()))
pytest.importorskip("gssapi")  # the gateway's kerberos5 module needs it (make test builds it)

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Negotiate</title>
<pre id="out">pending</pre>
<script>
  const out = document.getElementById("out");
  let done = false;
  const finish = (text) => { if (!done) { done = true; out.textContent = text; } };
  const ws = new WebSocket(`wss://${location.host}/k`);
  ws.onopen = () => ws.send("hello from Chromium");
  ws.onmessage = (event) => { finish(`RESULT OK ${event.data}`); ws.close(); };
  ws.onerror = () => finish("RESULT ERROR");
  ws.onclose = (event) => finish(`RESULT CLOSED ${event.code}`);
  setTimeout(() => finish("RESULT TIMEOUT"), 8000);
</script>
"""


def config(kdc: Kdc) -> str:
    """A public page and a Negotiate-protected echo on one https://localhost listener."""
    return f"""
service:
  - name: page
    accept: https://localhost:0/
    type: directory
    properties:
      directory: web
      welcome-file: index.html
    accept-options:
      ssl.bind: 127.0.0.1:0
  - name: kerberized
    accept: wss://localhost:0/k
    type: echo
    realm-name: corp
    authorization-constraint:
      require-role: AUTHORIZED
    accept-options:
      ssl.bind: 127.0.0.1:0
{SECURITY_PEM.strip()}
{realm_yaml(kdc)}
"""


def trusting_home(home: Path, ca_pem: Path) -> Path:
    """A HOME whose NSS db (what Chromium on Linux trusts) holds the test CA."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([str(CERTUTIL), "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    subprocess.run(
        [str(CERTUTIL), "-d", f"sql:{nssdb}", "-A", "-n", "wsgate-test-ca", "-t", "C,,", "-i", str(ca_pem)],
        check=True,
        timeout=30,
    )
    return home


async def in_browser(url: str, tmp_path: Path, home: Path, cases: dict[str, str]) -> dict[str, str]:
    """Run the cases in one Chromium (tests/negotiate_driver.py, its own process)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.negotiate_driver",
        url,
        str(tmp_path / "profile"),
        str(home),
        str(tmp_path / "browser.cc"),
        *(f"{name}={tickets}" for name, tickets in cases.items()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = out.decode().strip().splitlines()
    assert lines, f"the browser driver printed nothing (exit {process.returncode}): {err.decode()[-2000:]}"
    return json.loads(lines[-1])


def decisions(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The audit log's decisions on the kerberized service, in order."""
    return [
        record.msg
        for record in caplog.records
        if record.name == "wsgate.audit" and isinstance(record.msg, dict) and record.msg.get("service") == "kerberized"
    ]


async def test_chromium_signs_in_with_the_ticket_cache_and_no_prompt(
    start_gateway, kdc, pem_stores, tmp_path, caplog
) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text(PAGE)
    alice = kdc.kinit("alice", tmp_path / "alice.cc")
    carol = kdc.kinit("carol", tmp_path / "carol.cc")  # a valid ticket, but no role
    home = trusting_home(tmp_path / "home", pem_stores["truststore"])
    gateway = await start_gateway(config(kdc))
    port = gateway.port_of("page")
    assert gateway.port_of("kerberized") == port  # same origin: the page's script may use ambient credentials

    with caplog.at_level(logging.INFO, logger="wsgate.audit"):
        # alice first: her success shows this browser does Negotiate at all, so the refusals after it are
        # the gateway's; each case's audit lines show what the browser presented
        results = await in_browser(
            f"https://localhost:{port}/", tmp_path, home, {"alice": str(alice), "carol": str(carol), "none": "-"}
        )
    audit = decisions(caplog)
    summary = json.dumps({"results": results, "audit": audit}, default=str, indent=1)

    assert results["alice"] == "RESULT OK hello from Chromium", summary
    assert results["carol"] in ("RESULT ERROR", "RESULT CLOSED 1006"), summary
    assert results["none"] in ("RESULT ERROR", "RESULT CLOSED 1006"), summary

    # What the gateway saw, in order: the bare upgrade's 401 challenge comes first (Chromium answers a
    # challenge, it sends no ticket unasked); alice's ticket is accepted; carol's is valid but has no
    # role (403); without a cache there is nothing to answer with, only 401s (Chromium may retry once)
    seen = [f"{entry.get('status', 101)} {entry.get('user', '-')}" for entry in audit]
    assert seen[0] == "401 -", summary
    assert [line for line in seen if line != "401 -"] == [f"101 alice@{REALM}", f"403 carol@{REALM}"], summary
    assert seen.index(f"403 carol@{REALM}") < len(seen) - 1, summary  # the no-ticket case's 401s
