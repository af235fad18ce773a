"""Follow-ups of the attacker review: token offers in any case, session cookies realms could share,
a user defined twice in a users file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from wsgate.catalog import load_config
from wsgate.errors import ConfigError
from wsgate.gateway import Gateway
from wsgate.security.challenges import gather_credentials, without_token_offers

USERS = """<?xml version="1.0"?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  {extra}
</jaas-config>
"""


def realm_config(tmp_path: Path, realms: tuple[str, ...], extra_user: str = "") -> Path:
    (tmp_path / "jaas-config.xml").write_text(USERS.format(extra=extra_user))
    realm_text = "".join(
        f"""
    - name: {name}
      authentication:
        http-challenge-scheme: Application Basic
        login-modules:
          login-module:
            - type: file
              success: required
              options:
                file: jaas-config.xml
"""
        for name in realms
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            service:
              - name: echo
                accept: ws://127.0.0.1:0/echo
                type: echo
                realm-name: {realms[0]}
            security:
              realm:"""
        )
        + realm_text
    )
    return path


@pytest.mark.parametrize("prefix", ["WSGATE.TOKEN.", "Wsgate.Token.", "wsgate.TOKEN."])
def test_a_token_offer_in_any_case_is_a_credential_and_never_forwarded(prefix):
    offers = (f"{prefix}abc.def.ghi", "chat")
    credentials = gather_credentials({}, {}, frozenset({"bearer"}), subprotocols=offers)
    assert credentials.tokens == {"subprotocol": "abc.def.ghi"}
    assert without_token_offers(offers) == ("chat",)


async def test_an_upper_case_token_offer_reaches_no_back_end(start_gateway):
    """A ws back end is never offered the client's token, however the prefix is cased."""
    from aiohttp import WSServerHandshakeError, web

    offered: list[str] = []

    async def backend(request: web.Request) -> web.WebSocketResponse:
        offered.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", backend)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gw = await start_gateway(
            f"""
            service:
              - name: proxy
                accept: ws://127.0.0.1:0/p
                connect: ws://127.0.0.1:{port}/
                type: proxy
            """
        )
        import aiohttp

        async with aiohttp.ClientSession() as session:
            try:
                ws = await session.ws_connect(
                    f"ws://127.0.0.1:{gw.port_of('proxy')}/p", protocols=("WSGATE.TOKEN.secret123", "chat")
                )
                await ws.close()
            except WSServerHandshakeError:
                pass
        assert offered and all("secret123" not in o and "TOKEN" not in o.upper() for o in offered)
    finally:
        await runner.cleanup()


def test_realms_that_would_share_a_session_cookie_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"security/realm\[a_b\]/name.*session cookie 'wsgate_a_b'.*'a.b'"):
        Gateway(load_config(realm_config(tmp_path, ("a.b", "a_b"))))


def test_a_user_defined_twice_in_the_users_file_is_a_config_error(tmp_path):
    twice = "<user><name>joe</name><password>other</password><role-name>ADMIN</role-name></user>"
    with pytest.raises(ConfigError, match="user 'joe' is defined twice"):
        Gateway(load_config(realm_config(tmp_path, ("corp",), twice)))
