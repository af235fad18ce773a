"""The OpenID Connect provider fixture itself (tests/op.py), driven by stdlib HTTP clients and PyJWT."""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import http.server
import json
import secrets
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme

from tests.browser_driver import CHROMIUM
from tests.oidc_provider import BACKCHANNEL_EVENT, OidcProvider, chromium_home

REDIRECT = "https://127.0.0.1:9/cb"
SCOPE = "openid profile email groups"


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        return self.headers.get("Location") or ""

    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.location).query))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """A user agent with a cookie jar that shows redirects instead of following them."""

    def __init__(self, provider: OidcProvider) -> None:
        self.provider = provider
        self.jar = http.cookiejar.CookieJar()
        context = ssl.create_default_context(cafile=str(provider.ca_pem))
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), urllib.request.HTTPCookieProcessor(self.jar), _NoRedirects
        )

    def call(self, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Reply:
        url = path if path.startswith("https:") else self.provider.issuer + path
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=10) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.headers, error.read())


@dataclass
class Rp:
    """One relying party's view of a sign-in: PKCE verifier, nonce, state."""

    client_id: str
    redirect_uri: str = REDIRECT
    verifier: str = ""
    nonce: str = ""
    state: str = ""

    def authorize_path(self, **extra: str) -> str:
        self.verifier, self.nonce, self.state = (secrets.token_urlsafe(40) for _ in range(3))
        digest = hashlib.sha256(self.verifier.encode()).digest()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": SCOPE,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
            "code_challenge_method": "S256",
            **extra,
        }
        return "/authorize?" + urllib.parse.urlencode(params)

    def token_form(self, code: str, **extra: str) -> dict[str, str]:
        return {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": self.verifier,
            **extra,
        }


@pytest.fixture
def op(oidc_provider: OidcProvider) -> OidcProvider:  # noqa: F811  (the session's provider)
    return oidc_provider


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def setup(provider: OidcProvider, redirect_uri: str = REDIRECT, **client: Any) -> tuple[str, Rp]:
    """A fresh user (password "pw") and public client."""
    user, client_id = unique("user"), unique("rp")
    provider.add_user(user, "pw", groups=["staff", "ops"])
    provider.register_client(client_id, [redirect_uri], **client)
    return user, Rp(client_id, redirect_uri)


def sign_in(browser: Browser, rp: Rp, user: str, **extra: str) -> str:
    """Fill the form; the code from the redirect back to the client."""
    reply = browser.call(rp.authorize_path(**extra), {"username": user, "password": "pw"})
    assert reply.status == 302, reply.body
    query = reply.query()
    assert query["state"] == rp.state
    return query["code"]


def tokens(browser: Browser, rp: Rp, user: str) -> dict[str, Any]:
    reply = browser.call("/token", rp.token_form(sign_in(browser, rp, user)))
    assert reply.status == 200, reply.body
    return reply.json()  # type: ignore[no-any-return]


def verify(provider: OidcProvider, token: str, audience: str) -> dict[str, Any]:
    """Check a JWT against the provider's JWKS as a relying party would."""
    keys = jwt.PyJWKSet.from_dict(Browser(provider).call("/jwks").json())
    key = keys[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=provider.issuer)


def test_discovery_and_jwks(op: OidcProvider) -> None:
    browser = Browser(op)
    document = browser.call(op.discovery_url).json()
    issuer = op.issuer
    assert issuer.startswith("https://127.0.0.1:") and document["issuer"] == issuer
    for name, path in [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"), ("jwks_uri", "/jwks")]:
        assert document[name] == issuer + path
    assert document["end_session_endpoint"] == issuer + "/logout"
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = browser.call("/jwks").json()["keys"]  # one, or more after another test rotated the session's key
    assert keys and all(key["kty"] == "RSA" and key["kid"] and "d" not in key for key in keys)


def test_code_flow_with_pkce(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    form = browser.call(rp.authorize_path())
    assert form.status == 200
    page = form.body.decode()
    assert 'id="username"' in page and 'id="password"' in page and 'type="password"' in page and 'id="submit"' in page
    wrong = browser.call(rp.authorize_path(), {"username": user, "password": "nope"})
    assert wrong.status == 401 and not wrong.location and 'id="error"' in wrong.body.decode()
    assert not list(browser.jar)

    before = int(time.time())
    token = tokens(browser, rp, user)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 300 and token["refresh_token"]
    claims = verify(op, token["id_token"], rp.client_id)
    assert claims["sub"] == user and claims["nonce"] == rp.nonce
    assert claims["groups"] == ["staff", "ops"] and claims["preferred_username"] == user
    assert claims["email"] == f"{user}@example.test"
    assert claims["sid"] in op.sessions(user)
    assert before <= claims["auth_time"] <= claims["iat"] and claims["exp"] == claims["iat"] + 300
    userinfo = browser.call("/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}).json()
    assert userinfo["sub"] == user and userinfo["groups"] == ["staff", "ops"]


def test_single_sign_on_and_prompt(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    first = verify(op, tokens(browser, rp, user)["id_token"], rp.client_id)
    again = browser.call(rp.authorize_path())  # the provider session signs in without the form
    assert again.status == 302 and again.query()["state"] == rp.state and "code" in again.query()
    reply = browser.call("/token", rp.token_form(again.query()["code"]))
    second = verify(op, reply.json()["id_token"], rp.client_id)
    assert second["sid"] == first["sid"] and second["auth_time"] == first["auth_time"]
    assert browser.call(rp.authorize_path(prompt="login")).status == 200  # the form again
    assert browser.call(rp.authorize_path(prompt="none")).status == 302
    stranger = Browser(op).call(rp.authorize_path(prompt="none"))
    assert stranger.status == 302 and stranger.query()["error"] == "login_required"


def test_requests_that_must_not_redirect(op: OidcProvider) -> None:
    """An unknown client or unregistered redirect URI gets an error page, never a redirect."""
    _, rp = setup(op)
    browser = Browser(op)
    unknown = browser.call(Rp("nobody").authorize_path())
    assert unknown.status == 400 and not unknown.location
    elsewhere = browser.call(rp.authorize_path(redirect_uri="https://evil.test/cb"))
    assert elsewhere.status == 400 and not elsewhere.location


def test_pkce_and_replayed_code(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    code = sign_in(browser, rp, user)
    no_verifier = browser.call("/token", rp.token_form(code, code_verifier=""))
    assert no_verifier.status == 400
    code = sign_in(browser, rp, user)
    wrong = browser.call("/token", rp.token_form(code, code_verifier=secrets.token_urlsafe(40)))
    assert wrong.status == 400 and wrong.json()["error"] == "invalid_grant"

    code = sign_in(browser, rp, user)
    first = browser.call("/token", rp.token_form(code))
    assert first.status == 200
    replay = browser.call("/token", rp.token_form(code))
    assert replay.status == 400 and replay.json()["error"] == "invalid_grant"
    refresh = {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"], "client_id": rp.client_id}
    assert browser.call("/token", refresh).json()["error"] == "invalid_grant"  # the replay revoked it


def test_confidential_client(op: OidcProvider) -> None:
    user, rp = setup(op, secret="s3cret")
    browser = Browser(op)
    basic = base64.b64encode(f"{rp.client_id}:s3cret".encode()).decode()
    form = rp.token_form(sign_in(browser, rp, user))
    del form["client_id"]
    reply = browser.call("/token", form, headers={"Authorization": f"Basic {basic}"})
    assert reply.status == 200 and verify(op, reply.json()["id_token"], rp.client_id)["sub"] == user
    form = rp.token_form(sign_in(browser, rp, user), client_secret="s3cret")
    assert browser.call("/token", form).status == 200
    wrong = browser.call("/token", rp.token_form(sign_in(browser, rp, user), client_secret="nope"))
    assert wrong.json()["error"] == "invalid_client"
    public = browser.call("/token", rp.token_form(sign_in(browser, rp, user)))
    assert public.json()["error"] == "invalid_client"


def test_refresh_rotation_and_revocation(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    first = tokens(browser, rp, user)
    original = verify(op, first["id_token"], rp.client_id)

    def refresh(token: str) -> Reply:
        return browser.call(
            "/token", {"grant_type": "refresh_token", "refresh_token": token, "client_id": rp.client_id}
        )

    second = refresh(first["refresh_token"])
    assert second.status == 200
    renewed = verify(op, second.json()["id_token"], rp.client_id)
    assert renewed["sid"] == original["sid"] and renewed["auth_time"] == original["auth_time"]
    assert "nonce" not in renewed
    assert refresh(first["refresh_token"]).json()["error"] == "invalid_grant"  # rotated: one use each
    third = refresh(second.json()["refresh_token"])
    assert third.status == 200
    op.revoke_refresh_tokens(user)
    refused = refresh(third.json()["refresh_token"])
    assert refused.status == 400 and refused.json()["error"] == "invalid_grant"


def test_revocation_endpoint(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    token = tokens(browser, rp, user)
    other = tokens(browser, rp, user)
    assert browser.call("/revoke", {"token": token["refresh_token"], "client_id": rp.client_id}).status == 200
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": rp.client_id}
    assert browser.call("/token", form).json()["error"] == "invalid_grant"
    form["refresh_token"] = other["refresh_token"]
    assert browser.call("/token", form).status == 200  # only that one
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert browser.call("/userinfo", headers=bearer).status == 401


def test_key_rotation(tmp_path: Path) -> None:
    with OidcProvider(tmp_path) as provider:
        user, rp = setup(provider)
        browser = Browser(provider)
        before = tokens(browser, rp, user)["id_token"]
        kid = provider.rotate_key()
        after = tokens(browser, rp, user)["id_token"]
        assert jwt.get_unverified_header(after)["kid"] == kid != jwt.get_unverified_header(before)["kid"]
        assert verify(provider, before, rp.client_id) and verify(provider, after, rp.client_id)
        provider.rotate_key(keep_old=False)
        assert len(browser.call("/jwks").json()["keys"]) == 1
        with pytest.raises(KeyError):
            verify(provider, after, rp.client_id)
        with pytest.raises(jwt.InvalidSignatureError):
            verify(provider, provider.logout_token(user, rp.client_id, key="foreign"), rp.client_id)


def test_an_outage(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    token = tokens(browser, rp, user)
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": rp.client_id}
    op.unavailable = True
    try:
        assert browser.call("/jwks").status == 503 and browser.call("/token", form).status == 503
    finally:
        op.unavailable = False
    assert browser.call("/token", form).status == 200  # the refresh token was not spent by the outage


def test_lifetimes_are_settable(tmp_path: Path) -> None:
    with OidcProvider(tmp_path) as provider:
        user, rp = setup(provider)
        provider.access_token_ttl, provider.id_token_ttl, provider.refresh_token_ttl = 7, 11, 0
        browser = Browser(provider)
        token = tokens(browser, rp, user)
        assert token["expires_in"] == 7
        claims = verify(provider, token["id_token"], rp.client_id)
        assert claims["exp"] - claims["iat"] == 11
        form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": rp.client_id}
        assert browser.call("/token", form).json()["error"] == "invalid_grant"  # expired at once
        started = time.monotonic()
    assert time.monotonic() - started < 3
    with pytest.raises(OSError):
        urllib.request.urlopen(provider.discovery_url, timeout=2)  # noqa: S310


def test_tamper_changes_only_the_next_id_token(op: OidcProvider) -> None:
    user, rp = setup(op)
    browser = Browser(op)
    op.tamper = {"nonce": "forged", "aud": "someone-else", "email": None}
    tampered = tokens(browser, rp, user)["id_token"]
    claims = jwt.decode(tampered, options={"verify_signature": False})
    assert claims["nonce"] == "forged" and claims["aud"] == "someone-else" and "email" not in claims
    with pytest.raises(jwt.InvalidAudienceError):
        verify(op, tampered, rp.client_id)
    assert op.tamper == {}
    clean = verify(op, tokens(browser, rp, user)["id_token"], rp.client_id)
    assert clean["nonce"] == rp.nonce and clean["aud"] == rp.client_id

    op.tamper = {"key": "foreign"}
    with pytest.raises(jwt.InvalidSignatureError):
        verify(op, tokens(browser, rp, user)["id_token"], rp.client_id)
    op.tamper = {"alg": "none"}
    unsigned = tokens(browser, rp, user)["id_token"]
    assert jwt.get_unverified_header(unsigned)["alg"] == "none" and unsigned.endswith(".")


class Receiver:
    """A relying party on loopback HTTPS: records what is POSTed to it (back-channel logout) and answers GETs
    (the redirect back from the provider) with a page that has an element with id "callback"."""

    def __init__(self, cert: trustme.LeafCert, status: int = 200) -> None:
        self.received: list[tuple[str, dict[str, list[str]]]] = []
        self.visited: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.received.append((self.headers["Content-Type"], urllib.parse.parse_qs(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                receiver.visited.append(self.path)
                page = b"<!doctype html><p id='callback'>back at the client</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.uri = f"https://127.0.0.1:{self.server.server_port}/backchannel"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def tokens(self) -> list[str]:
        return [form["logout_token"][0] for _, form in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver(server_cert: trustme.LeafCert) -> Iterator[Receiver]:
    rp = Receiver(server_cert)
    yield rp
    rp.close()


def check_logout_token(provider: OidcProvider, token: str, client_id: str) -> dict[str, Any]:
    claims = verify(provider, token, client_id)
    assert jwt.get_unverified_header(token)["typ"] == "logout+jwt"
    assert claims["events"] == {BACKCHANNEL_EVENT: {}} and "nonce" not in claims
    assert claims["jti"] and claims["iat"] <= claims["exp"]
    return claims


def test_backchannel_logout(op: OidcProvider, receiver: Receiver) -> None:
    user, rp = setup(op, backchannel_logout_uri=receiver.uri)
    browser = Browser(op)
    token = tokens(browser, rp, user)
    sid = verify(op, token["id_token"], rp.client_id)["sid"]
    assert op.backchannel_logout(user, rp.client_id) == [200]
    ((content_type, _),) = receiver.received
    assert content_type == "application/x-www-form-urlencoded"
    claims = check_logout_token(op, receiver.tokens()[0], rp.client_id)
    assert claims["sub"] == user and claims["sid"] == sid
    assert op.sessions(user) == []
    assert browser.call(rp.authorize_path()).status == 200  # the provider session is over: the form again
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": rp.client_id}
    assert browser.call("/token", form).json()["error"] == "invalid_grant"
    assert op.backchannel_logout(user, rp.client_id) == [200]  # no session left: sub only
    assert "sid" not in check_logout_token(op, receiver.tokens()[1], rp.client_id)


def test_logout_token_overrides(op: OidcProvider) -> None:
    user, rp = setup(op)
    tokens(Browser(op), rp, user)
    token = op.logout_token(user, rp.client_id)
    assert check_logout_token(op, token, rp.client_id)["sid"] == op.sessions(user)[0]
    with pytest.raises(jwt.InvalidSignatureError):
        verify(op, op.logout_token(user, rp.client_id, key="foreign"), rp.client_id)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(op, op.logout_token(user, rp.client_id, aud="other"), rp.client_id)
    odd = verify(op, op.logout_token(user, rp.client_id, nonce="n", events=None), rp.client_id)
    assert odd["nonce"] == "n" and "events" not in odd


def test_rp_initiated_logout(op: OidcProvider, receiver: Receiver) -> None:
    post_logout = "https://127.0.0.1:9/signed-out"
    user, rp = setup(op, post_logout_redirect_uris=[post_logout], backchannel_logout_uri=receiver.uri)
    browser = Browser(op)
    id_token = tokens(browser, rp, user)["id_token"]
    sid = verify(op, id_token, rp.client_id)["sid"]
    elsewhere = urllib.parse.urlencode({"id_token_hint": id_token, "post_logout_redirect_uri": "https://evil.test/"})
    assert browser.call(f"/logout?{elsewhere}").status == 200  # ends the session, redirects nowhere
    assert op.sessions(user) == []
    assert check_logout_token(op, receiver.tokens()[0], rp.client_id)["sid"] == sid

    id_token = tokens(browser, rp, user)["id_token"]
    params = {"id_token_hint": id_token, "post_logout_redirect_uri": post_logout, "state": "s1"}
    reply = browser.call("/logout?" + urllib.parse.urlencode(params))
    assert reply.status == 302 and reply.location == post_logout + "?state=s1"
    assert browser.call(rp.authorize_path()).status == 200  # signed out at the provider
    assert len(receiver.received) == 2


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (make test installs it)")
def test_the_login_form_in_chromium(op: OidcProvider, receiver: Receiver, tmp_path: Path) -> None:
    user, rp = setup(op, redirect_uri=receiver.uri.replace("/backchannel", "/cb"))
    home = chromium_home(op.ca_pem, tmp_path / "home")
    command = [
        sys.executable,
        "-m",
        "tests.oidc_browser",
        str(home),
        op.issuer + rp.authorize_path(),
        user,
        "pw",
        op.issuer + rp.authorize_path(),  # a new state and nonce
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    lines = done.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": done.stderr[-2000:]}
    assert "error" not in result, result
    assert result["wrong"]["error"] == "Wrong user name or password."
    assert result["wrong"]["url"].startswith(op.issuer + "/authorize?")
    first, second = (dict(urllib.parse.parse_qsl(urllib.parse.urlparse(url).query)) for url in result["callbacks"])
    assert first["code"] != second["code"] and second["state"] == rp.state
    assert len([path for path in receiver.visited if path.startswith("/cb")]) == 2  # none for the wrong password
