"""OpenID Connect single sign-on in real headless Chromium (tests/oidc_browser_driver.py, its own process).

The gateway and the provider run over HTTPS with certificates from the tests' CA, which Chromium trusts
through an NSS database in its own HOME. One browser session walks through: sign in at the provider's
form from the demo page, two protected services with that one sign-in, a token refresh without reconnecting,
a back-channel logout that closes the sockets, a second sign-in, and a refresh the provider refuses.
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

from tests.oidc_provider import OidcProvider

from .conftest import client_ssl
from .oidc_gateway import start_site

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


pytestmark = [
    pytest.mark.skipif(_missing() is not None and not os.environ.get("CI"), reason=str(_missing())),
    pytest.mark.usefixtures("pem_stores"),
]


def trusting_home(folder: Path, ca_pem: Path) -> Path:
    nssdb = folder / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([str(CERTUTIL), "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    subprocess.run(
        [str(CERTUTIL), "-d", f"sql:{nssdb}", "-A", "-n", "wsgate-test-ca", "-t", "C,,", "-i", str(ca_pem)],
        check=True,
        timeout=30,
    )
    return folder


class Driver:
    """The browser process: its JSON lines as they come, and a line to it when the test has acted."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def phase(self, name: str, seconds: float = 40) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), seconds)
        if not line:
            err = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"driver ended before {name}: {err.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(line)
        assert result["phase"] == name, result
        return result

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")


async def test_single_sign_on_in_chromium_follows_the_provider(
    start_gateway,
    tmp_path,
    ca,
    oidc_provider: OidcProvider,
    caplog,
) -> None:
    caplog.set_level(logging.INFO)
    oidc_provider.access_token_ttl = oidc_provider.id_token_ttl = 6
    name = "chromium-user"
    oidc_provider.add_user(name, "pw-chromium", groups=["staff"], preferred_username=name)
    site = await start_site(start_gateway, tmp_path, oidc_provider, client_ssl(ca), "gw-chromium", secret="s-chr")
    home = trusting_home(tmp_path / "home", oidc_provider.ca_pem)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.oidc_browser_driver",
        f"{site.base}/",
        str(home),
        name,
        "pw-chromium",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    driver = Driver(process)
    try:
        signed_in = await driver.phase("signed-in")
        assert signed_in["echoes"] == {"one": "hello one", "two": "hello two"}, signed_in
        assert signed_in["session"].startswith(f"signed in as {name} (staff)")
        cookies = {c["name"]: c for c in signed_in["cookies"]}
        session = cookies["wsgate_sso"]
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
        assert "wsgate_sso" not in signed_in["document_cookie"]  # HttpOnly: no script reads it
        held = next(iter(site.gateway.realms["sso"].oidc.held.values()))
        tokens = [held.tokens.id_token, held.tokens.access_token, held.tokens.refresh_token]
        first_refresh = held.tokens.refresh_token
        browser_side = json.dumps(signed_in)
        for token in tokens:
            assert token and token not in browser_side  # not in the page, its cookies or its URL

        refreshed = await driver.phase("refreshed")
        assert refreshed["echoes"] == {"one": "again one", "two": "again two"}, refreshed  # the same sockets
        assert refreshed["closes"] == []
        assert held.tokens.refresh_token != first_refresh  # refreshed (and rotated) meanwhile

        driver.go()
        await asyncio.sleep(0.2)  # the driver took its start time
        statuses = await asyncio.to_thread(oidc_provider.backchannel_logout, name, site.client)
        assert statuses == [200]
        logged_out = await driver.phase("logged-out")
        assert sorted(c["name"] for c in logged_out["closes"]) == ["one", "two"], logged_out
        assert {c["code"] for c in logged_out["closes"]} == {1008}
        assert max(c["after"] for c in logged_out["closes"]) < 1.5

        again = await driver.phase("signed-in-again")
        assert again["echoes"] == {"one": "hello one", "two": "hello two"}
        oidc_provider.revoke_refresh_tokens(name)
        driver.go()
        refused = await driver.phase("refused")
        assert {c["code"] for c in refused["closes"]} == {1008} and len(refused["closes"]) == 2, refused
        assert "session ended by the provider" in refused["log"]
    finally:
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.communicate(), 20)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.communicate(), 10)
    for token in tokens:
        assert token not in caplog.text
