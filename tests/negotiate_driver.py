"""Drives Debian's Chromium through Kerberos Negotiate, in its own process (tests/test_browser_kerberos.py runs it).

Usage: python -m tests.negotiate_driver URL PROFILE HOME CCACHE CASE=TICKETS [CASE=TICKETS ...]

One persistent-context launch serves every case. Before each case the file credential cache
``CCACHE`` (Chromium's ``KRB5CCNAME``) is replaced by the case's ``TICKETS`` (``-``: no cache at all),
then a fresh tab loads ``URL``, whose script writes ``RESULT …`` into ``#out``. Prints
``{case: result}`` as JSON. MIT Kerberos reads the cache file on every ``gss_init_sec_context``,
so the swap is what the browser's next Negotiate answer uses.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

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
    # Negotiate: only to localhost, and with the name in the URL (no DNS canonicalization of the SPN)
    "--auth-server-allowlist=localhost",
    "--disable-auth-negotiate-cname-lookup",
]


def seed_profile(profile: Path) -> None:
    """Without this pref Chromium on Linux loads libgssapi only after a first Negotiate challenge, which
    then fails with ERR_UNSUPPORTED_AUTH_SCHEME (system_network_context_manager.cc)."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "Local State").write_text(json.dumps({"net": {"received_http_auth_negotiate_headers": True}}))


def use_tickets(ccache: Path, tickets: str) -> None:
    if tickets == "-":
        ccache.unlink(missing_ok=True)
        return
    staged = ccache.with_suffix(".next")
    shutil.copyfile(tickets, staged)
    os.replace(staged, ccache)  # atomic: the browser never reads half a cache


def main(url: str, profile: str, home: str, ccache: str, *cases: str) -> int:
    seed_profile(Path(profile))
    env = {**os.environ, "HOME": home, "KRB5CCNAME": f"FILE:{ccache}"}
    results: dict[str, str] = {}
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, env=env, args=ARGS
        )
        try:
            for case in cases:
                name, _, tickets = case.partition("=")
                use_tickets(Path(ccache), tickets)
                page = context.new_page()
                try:
                    page.goto(url, timeout=10000)
                    page.wait_for_function(
                        "document.getElementById('out').textContent.startsWith('RESULT')", timeout=10000
                    )
                    results[name] = page.text_content("#out") or ""
                except Exception as exc:
                    ARTIFACTS.mkdir(exist_ok=True)
                    try:
                        page.screenshot(path=str(ARTIFACTS / f"negotiate-{name}.png"), timeout=5000)
                    except Exception:  # a page that never loaded may not be capturable; the error still counts
                        pass
                    results[name] = f"DRIVER ERROR {type(exc).__name__}: {exc}"
                finally:
                    page.close()
        finally:
            context.close()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
