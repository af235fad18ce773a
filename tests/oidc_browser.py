"""Signs in at the test OpenID provider's form in Chromium (Playwright), in its own process.

Usage: python -m tests.oidc_browser HOME AUTHORIZE_URL USER PASSWORD SECOND_AUTHORIZE_URL; prints JSON: the page after a wrong
password, the callback URL the form redirected to, and where a second authorization request (the SSO cookie) went.
HOME holds an NSS database that trusts the provider's CA (tests.oidc_provider.chromium_home makes one), so the
certificate is really checked. The callback page must show an element with id "callback".
"""

from __future__ import annotations

import json
import sys

from playwright.sync_api import sync_playwright

from .browser_driver import CHROMIUM


def main(home: str, authorize_url: str, user: str, password: str, second_url: str) -> int:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            env={"HOME": home},
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        try:
            page = browser.new_context().new_page()
            page.goto(authorize_url)
            page.fill("#username", user)
            page.fill("#password", "not the password")
            page.click("#submit")
            page.wait_for_selector("#error", timeout=10000)
            wrong = {"error": page.text_content("#error"), "url": page.url}
            page.fill("#username", user)
            page.fill("#password", password)
            page.click("#submit")
            page.wait_for_selector("#callback", timeout=10000)
            reached = [page.url]
            page.goto(second_url)  # the provider session: straight back, no form
            page.wait_for_selector("#callback", timeout=10000)
            reached.append(page.url)
            result = {"wrong": wrong, "callbacks": reached}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            browser.close()
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
