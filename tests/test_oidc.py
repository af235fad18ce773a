"""OpenID Connect sign-in without a provider: return paths, transactions, logout-token rules, claims, config.

And the docs examples (docs/examples/oidc.yaml, oidc-config.xml) signing in against the real provider.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from tests.oidc_provider import OidcProvider
from wsgate.catalog import load_config
from wsgate.core.fetch import HttpPort
from wsgate.errors import ConfigError, ConfigErrors
from wsgate.security.login.oidc import BACKCHANNEL_EVENT, OidcError, OidcLoginModule, ProviderUnavailable, logout_claims
from wsgate.security.oidc import Replays, Transactions, safe_return

from .conftest import client_ssl
from .oidc_gateway import Site, session
from .processes import free_port
from .test_config import make_stores

DOCS = Path(__file__).parent.parent / "docs"


async def _never(*args: object) -> object:
    raise AssertionError("no HTTP in these tests")


HTTP = HttpPort(_never, _never)  # type: ignore[arg-type]
OPTIONS = {"issuer": "https://idp.test/realms/a", "client-id": "gw"}


def module(tmp_path: Path, **options: str) -> OidcLoginModule:
    return OidcLoginModule({**OPTIONS, **options}, "realm/login-module[1]", tmp_path, http=HTTP)


# -- return paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["/", "/chat", "/a/b?c=d&e=%2F", "/index.html#top"])
def test_return_paths_on_this_site_are_kept(good: str) -> None:
    assert safe_return(good) == good


def test_no_return_means_the_root() -> None:
    assert safe_return(None) == "/" and safe_return("") == "/"


@pytest.mark.parametrize(
    "bad",
    [
        "//evil.test",
        "/\\evil.test",
        "\\\\evil.test",
        "https://evil.test/",
        "javascript:alert(1)",
        "evil.test",
        "/a\r\nLocation: https://evil.test",
        "/a\tb",
        "/\x7f",
        "/é",
        "/" + "a" * 3000,
        "///evil.test",
    ],
)
def test_anything_else_is_refused(bad: str) -> None:
    assert safe_return(bad) is None


# -- transactions ---------------------------------------------------------------------------------


def test_a_transaction_is_used_once_and_only_by_its_browser() -> None:
    store = Transactions()
    state, transaction = store.begin("browser-a", "/x", "https://gw/cb")
    assert len(transaction.verifier) >= 43 and transaction.nonce and transaction.binding != "browser-a"
    assert store.take(state, "browser-b") is None  # another browser: refused, and spent
    assert store.take(state, "browser-a") is None
    state, _ = store.begin("browser-a", "/x", "https://gw/cb")
    assert store.take(state, None) is None
    state, _ = store.begin("browser-a", "/x", "https://gw/cb")
    found = store.take(state, "browser-a")
    assert found is not None and found.return_to == "/x"
    assert store.take(state, "browser-a") is None  # single use


def test_transactions_expire_and_are_bounded() -> None:
    store = Transactions(limit=3, ttl=0.05)
    states = [store.begin("b", "/", "u")[0] for _ in range(5)]
    assert len(store) == 3
    assert store.take(states[0], "b") is None  # the oldest went first
    time.sleep(0.06)
    assert store.take(states[-1], "b") is None  # expired


def test_replays_are_remembered_within_a_bound() -> None:
    replays = Replays(limit=2)
    later = time.time() + 60
    assert replays.first("a", later) and not replays.first("a", later)
    assert replays.first("b", later) and replays.first("c", later)
    assert replays.first("a", later)  # pushed out by the bound: the iat window refuses it anyway


# -- logout tokens --------------------------------------------------------------------------------

NOW = 1_800_000_000.0
VALID = {"iss": "i", "aud": "gw", "iat": NOW, "jti": "j1", "sid": "s1", "sub": "u1", "events": {BACKCHANNEL_EVENT: {}}}


def test_a_valid_logout_token_names_its_session() -> None:
    assert logout_claims(VALID, NOW, 120, 30) == ("s1", "u1", "j1", NOW)
    assert logout_claims({**VALID, "sid": None}, NOW, 120, 30)[:2] == (None, "u1")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"events": None}, "event"),
        ({"events": {"other": {}}}, "event"),
        ({"events": {BACKCHANNEL_EVENT: "yes"}}, "event"),
        ({"nonce": "n"}, "nonce"),
        ({"sid": None, "sub": None}, "neither sid nor sub"),
        ({"sid": "", "sub": 5}, "neither sid nor sub"),
        ({"jti": None}, "jti"),
        ({"jti": 7}, "jti"),
        ({"iat": NOW - 121}, "window"),
        ({"iat": NOW + 31}, "window"),
        ({"iat": "1800000000"}, "window"),
        ({"iat": True}, "window"),
    ],
)
def test_logout_tokens_are_refused(change: dict[str, object], reason: str) -> None:
    claims = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    if "nonce" in change:
        claims["nonce"] = "n"
    with pytest.raises(OidcError, match=reason):
        logout_claims(claims, NOW, 120, 30)


# -- claims → identity ------------------------------------------------------------------------------


def test_user_and_roles_come_from_configured_claims(tmp_path: Path) -> None:
    plain = module(tmp_path)
    assert plain.identity_of({"sub": "123", "preferred_username": "ann", "groups": ["staff", 4]}) == (
        "ann",
        frozenset({"staff"}),
    )
    assert plain.identity_of({"sub": "123"}) == ("123", frozenset())  # no user claim: the subject
    nested = module(tmp_path, **{"roles-claim": "realm_access.roles", "user-claim": "email"})
    claims = {"sub": "1", "email": "a@x", "realm_access": {"roles": ["admin", "staff"]}, "groups": ["x"]}
    assert nested.identity_of(claims) == ("a@x", frozenset({"admin", "staff"}))
    assert module(tmp_path, **{"roles-claim": "scope"}).identity_of({"sub": "1", "scope": "a b"})[1] == {"a", "b"}
    with pytest.raises(OidcError):
        plain.identity_of({"preferred_username": ""})


def test_discovery_must_name_the_configured_issuer_and_https_endpoints(tmp_path: Path) -> None:
    oidc = module(tmp_path)
    good = {
        "issuer": OPTIONS["issuer"],
        "authorization_endpoint": "https://idp.test/auth",
        "token_endpoint": "https://idp.test/token",
        "jwks_uri": "https://idp.test/jwks",
    }
    provider = oidc.read_discovery(good)
    assert provider.end_session_endpoint is None and not provider.backchannel_logout and not provider.iss_parameter
    assert oidc.read_discovery({**good, "authorization_response_iss_parameter_supported": True}).iss_parameter
    for bad in ({**good, "issuer": "https://evil.test"}, {**good, "token_endpoint": "http://idp.test/token"}, []):
        with pytest.raises(ProviderUnavailable):
            oidc.read_discovery(bad)


def test_the_authorization_url_asks_for_a_code_with_pkce(tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    oidc = module(tmp_path)
    provider = oidc.read_discovery(
        {
            "issuer": OPTIONS["issuer"],
            "authorization_endpoint": "https://idp.test/auth?kc=1",
            "token_endpoint": "https://idp.test/token",
            "jwks_uri": "https://idp.test/jwks",
        }
    )
    url = oidc.authorization_url(provider, "https://gw/cb", "st", "no", "v" * 64)
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["response_type"] == "code" and params["code_challenge_method"] == "S256"
    assert params["code_challenge"] != "v" * 64 and params["kc"] == "1" and params["scope"] == "openid profile email"
    assert "v" * 64 not in url  # the verifier never leaves the gateway but to the token endpoint


# -- configuration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "element", "message"),
    [
        ({"issuer": "http://idp.test"}, "options/issuer", "https"),
        ({"issuer": "https://idp.test/?a=1"}, "options/issuer", "https"),
        ({"client-id": ""}, "options/client-id", "required"),
        ({"scope": "profile"}, "options/scope", "openid"),
        ({"client-secret-file": "missing.secret"}, "options/client-secret-file", "cannot read"),
        ({"ca-file": "missing.pem"}, "options/ca-file", "cannot load"),
        ({"refresh-margin": "soon"}, "options/refresh-margin", ""),
        ({"redirect-uri": "/cb"}, "options/redirect-uri", "absolute"),
        ({"colour": "blue"}, "options/colour", "unknown option"),
        ({"algorithms": "HS256"}, "options/algorithms", "asymmetric"),
    ],
)
def test_bad_options_name_their_element(tmp_path: Path, options: dict[str, str], element: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        module(tmp_path, **options)
    assert f"realm/login-module[1]/{element}" in str(error.value) and message in str(error.value)


REALM = """
service:
  - name: chat
    accept: wss://localhost:8443/chat
    type: echo
    realm-name: company
    authorization-constraint:
      require-role: staff
security:
  keystore:
    type: PEM
    file: keystore.pem
  realm:
    name: company
    authentication:
{mode}      login-modules:
        login-module:
          type: oidc
          options:
            issuer: https://idp.test
            client-id: gw
"""


def test_a_realm_with_an_oidc_module_needs_sessions(tmp_path: Path, pem_stores: dict[str, Path]) -> None:
    from wsgate.gateway import Gateway

    path = tmp_path / "gateway.yaml"
    path.write_text(REALM.format(mode=""))
    with pytest.raises((ConfigError, ConfigErrors)) as error:
        Gateway(load_config(path))
    text = str(error.value)
    assert "security/realm[company]/authentication/authorization-mode" in text and "recycle" in text
    path.write_text(REALM.format(mode="      authorization-mode: recycle\n"))
    gateway = Gateway(load_config(path))
    assert gateway.realms["company"].oidc is not None


# -- the docs examples, signing in against the real provider ------------------------------------------


@pytest.mark.parametrize("example", ["oidc.yaml", "oidc-config.xml"])
async def test_the_docs_examples_sign_in_with_a_real_provider(
    start_gateway,
    tmp_path: Path,
    ca,
    example: str,
    oidc_provider: OidcProvider,
) -> None:
    shutil.copytree(DOCS / "examples", tmp_path, dirs_exist_ok=True)
    make_stores(tmp_path, ca)  # the examples' keystore.p12 and truststore.pem, for this test's CA
    port = free_port()
    client = "docs-" + example.replace(".", "-")
    base = f"https://localhost:{port}"
    secret = (tmp_path / "oidc-client.secret").read_text().strip()
    oidc_provider.register_client(client, [f"{base}/chat/.wsgate/oidc/callback"], secret=secret)
    oidc_provider.add_user("docs-user", "pw", groups=["staff"], preferred_username="docs-user")
    text = (DOCS / "examples" / example).read_text()
    overrides = {
        "gateway.port": str(port),
        "oidc.issuer": oidc_provider.issuer,
        "oidc.client-id": client,
        "oidc.ca-file": str(oidc_provider.ca_pem),
    }
    gateway = await start_gateway(text, name=example, **overrides)
    site = Site(gateway, port, client, client_ssl(ca))
    async with session(site) as http:
        location = await http.get(f"{base}/chat/.wsgate/oidc/login", allow_redirects=False)
        assert location.status == 302
        status, _, _ = await sign_in_at(http, site, "chat")
        assert status == 200
        for name in ("chat", "feed"):
            ws = await http.ws_connect(f"wss://localhost:{port}/{name}", origin=base)
            await ws.send_str("hi")
            assert (await ws.receive()).data == "hi"
            await ws.close()


async def sign_in_at(http: aiohttp.ClientSession, site: Site, service: str) -> tuple[int, str, dict[str, str]]:
    from .oidc_gateway import authorize, callback

    async with http.get(f"{site.base}/{service}/.wsgate/oidc/login", allow_redirects=False) as response:
        location = response.headers["Location"]
    return await callback(http, await authorize(http, location, "docs-user", "pw"))


@pytest.mark.parametrize(
    "line",
    [
        "POST /one/.wsgate/oidc/backchannel-logout logout_token=abc123opaque456",
        "303 to https://idp.test/logout?client_id=gw&id_token_hint=opaque789value&state=s",
        "GET /one/.wsgate/oidc/callback?code=Splx10BeZQQYbYS6WxSbIA&state=xyz",
        "refresh with refresh_token=8xLOxBtZp8 failed",
    ],
)
def test_oidc_credentials_in_a_log_line_are_masked(line: str) -> None:
    from wsgate.observe.redact import REDACTOR

    masked = REDACTOR.text(line)
    assert "[redacted]" in masked
    for secret in ("abc123opaque456", "opaque789value", "Splx10BeZQQYbYS6WxSbIA", "8xLOxBtZp8"):
        assert secret not in masked
