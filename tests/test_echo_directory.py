"""Loopback tests: echo, routing by host + path, limits, directory service."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from wsgate.gateway import Gateway

ECHO = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      ws.maximum.message.size: 1k
  - name: echo2
    accept: ws://127.0.0.1:0/other
    type: echo
"""


async def test_echo_text_and_binary(start_gateway, http):
    gw = await start_gateway(ECHO)
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        await ws.send_bytes(b"\x00\x01\xff")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"\x00\x01\xff"


async def test_many_services_share_one_port(start_gateway, http):
    gw = await start_gateway(ECHO)
    assert gw.port_of("echo") == gw.port_of("echo2")
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo2')}/other") as ws:
        await ws.send_str("x")
        assert (await ws.receive()).data == "x"


async def test_oversized_message_closes_1009_and_others_keep_working(start_gateway, http):
    gw = await start_gateway(ECHO)
    url = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    async with http.ws_connect(url) as ok, http.ws_connect(url) as big:
        await big.send_bytes(b"x" * 1025)
        msg = await big.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009
        await ok.send_bytes(b"y" * 1024)  # exactly at the limit is fine
        assert (await ok.receive()).data == b"y" * 1024


async def test_unknown_path_and_host_are_404(start_gateway, http):
    gw = await start_gateway(ECHO)
    port = gw.port_of("echo")
    async with http.get(f"http://127.0.0.1:{port}/nope") as response:
        assert response.status == 404
    async with http.get(f"http://127.0.0.1:{port}/echo", headers={"Host": f"evil.example:{port}"}) as response:
        assert response.status == 404


async def test_plain_get_on_websocket_path_is_426(start_gateway, http):
    gw = await start_gateway(ECHO)
    async with http.get(f"http://127.0.0.1:{gw.port_of('echo')}/echo") as response:
        assert response.status == 426


async def test_inactivity_timeout_pings_then_closes_silent_client(start_gateway, http):
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
            accept-options:
              ws.inactivity.timeout: 0.6s
    """)
    url = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    async with http.ws_connect(url, autoping=True) as alive:  # answers pings while it reads: stays open
        reading = asyncio.create_task(alive.receive())
        async with http.ws_connect(url, autoping=False) as silent:  # never answers
            first = await asyncio.wait_for(silent.receive(), 2)
            assert first.type is aiohttp.WSMsgType.PING
            loop = asyncio.get_running_loop()
            started = loop.time()
            end = await asyncio.wait_for(silent.receive(), 2)
            assert end.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert 0.2 < loop.time() - started < 1.5
        await alive.send_str("still here")
        assert (await asyncio.wait_for(reading, 2)).data == "still here"


async def test_graceful_stop_closes_with_1001(tmp_path, http):
    from wsgate.catalog import load_config

    path = tmp_path / "g.yaml"
    path.write_text(ECHO)
    gw = Gateway(load_config(path))
    await gw.start()
    async with http.ws_connect(f"ws://127.0.0.1:{gw.port_of('echo')}/echo") as ws:
        stopping = asyncio.create_task(gw.stop(grace=2))
        msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await ws.close()
        await asyncio.wait_for(stopping, 3)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port_of("echo")), timeout=1)


DIRECTORY = """
service:
  - name: site
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: /site
      welcome-file: index.html
    mime-mapping:
      - extension: data
        mime-type: application/x-test
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "sub" / "x.data").write_text("data")
    (tmp_path / "secret.txt").write_text("do not serve")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    return root


async def test_directory_serves_welcome_file_and_mime_mapping(start_gateway, http, site):
    gw = await start_gateway(DIRECTORY)
    base = f"http://127.0.0.1:{gw.port_of('site')}"
    async with http.get(base + "/") as response:
        assert response.status == 200 and await response.text() == "<h1>home</h1>"
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(base + "/sub/x.data") as response:
        assert response.headers["Content-Type"] == "application/x-test"


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt", "/link", "/missing"])
async def test_directory_never_leaves_its_root(start_gateway, site, path):
    gw = await start_gateway(DIRECTORY)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port_of("site"))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 404") or response.startswith(b"HTTP/1.1 400"), response[:40]
    assert b"do not serve" not in response


async def test_directory_refuses_post(start_gateway, http, site):
    gw = await start_gateway(DIRECTORY)
    async with http.post(f"http://127.0.0.1:{gw.port_of('site')}/", data=b"x") as response:
        assert response.status == 405


async def test_embedded_default_config_serves_demo_and_echo(http):
    from wsgate.catalog import load_default_config

    gw = Gateway(load_default_config({"gateway.hostname": "127.0.0.1", "gateway.port": "0"}))
    await gw.start()
    try:
        port = gw.port_of("demo")
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            page = await response.text()
            assert response.status == 200 and "/echo" in page
        async with http.ws_connect(f"ws://127.0.0.1:{port}/echo") as ws:
            await ws.send_str("demo")
            assert (await ws.receive()).data == "demo"
        secure = f"ws://127.0.0.1:{port}/secure-echo"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(secure)
        assert refused.value.status == 401
        # What the demo page does: sign in over HTTP, then open the WebSocket with the session cookie.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            login = f"http://127.0.0.1:{port}/secure-echo/.wsgate/session"
            async with browser.post(login, headers={"Authorization": "Basic am9lOndlbGNvbWU="}) as response:
                assert (await response.json())["user"] == "joe"
            async with browser.ws_connect(secure) as ws:
                await ws.send_str("signed in")
                assert (await ws.receive()).data == "signed in"
    finally:
        await gw.stop(1)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://127.0.0.1:{port}", True),  # same origin
        ("http://app.example:8080", True),  # listed
        ("https://app.example:8080", False),  # scheme differs
        ("http://evil.example", False),
        ("null", False),
        ("http://app.example:8080/path", False),
    ],
)
async def test_cross_origin_upgrades_are_denied_unless_allowed(start_gateway, http, origin, allowed):
    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
            cross-site-constraint:
              allow-origin: http://app.example:8080
    """)
    port = gw.port_of("echo")
    headers = {"Origin": origin.format(port=port)} if origin else {}
    if allowed:
        async with http.ws_connect(f"ws://127.0.0.1:{port}/echo", headers=headers) as ws:
            await ws.send_str("ok")
            assert (await ws.receive()).data == "ok"
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"ws://127.0.0.1:{port}/echo", headers=headers)
        assert refused.value.status == 403


KAAZING_STYLE = """<?xml version="1.0" encoding="UTF-8" ?>
<gateway-config xmlns="http://xmlns.kaazing.org/2015/11/gateway">
  <properties>
    <property><name>hostname</name><value>127.0.0.1</value></property>
    <property><name>gateway.base.port</name><value>0</value></property>
  </properties>
  <service>
    <name>base-directory</name>
    <accept>http://${hostname}:${gateway.base.port}/</accept>
    <type>directory</type>
    <properties>
      <directory>/base</directory>
      <welcome-file>index.html</welcome-file>
      <error-pages-directory>/error-pages</error-pages-directory>
      <options>indexes</options>
      <location>
        <patterns>**/*.js</patterns>
        <cache-control>max-age=60</cache-control>
      </location>
    </properties>
    <accept-options><tcp.bind>127.0.0.1:${gateway.base.port}</tcp.bind></accept-options>
  </service>
  <service>
    <name>echo</name>
    <accept>ws://${hostname}:${gateway.base.port}/echo</accept>
    <type>echo</type>
    <accept-options><tcp.bind>127.0.0.1:${gateway.base.port}</tcp.bind></accept-options>
    <cross-site-constraint><allow-origin>*</allow-origin></cross-site-constraint>
  </service>
</gateway-config>
"""


async def test_kaazing_layout_with_indexes_location_and_error_pages(tmp_path, http):
    """GATEWAY_HOME/conf/gateway-config.xml with its web/ folder beside conf/, as Kaazing ships it."""
    from wsgate.catalog import load_config

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gateway-config.xml").write_text(KAAZING_STYLE)
    base = tmp_path / "web" / "base"
    (base / "js").mkdir(parents=True)
    (base / "js" / "app.js").write_text("1;")
    (base / "docs <b>").mkdir()
    (tmp_path / "web" / "error-pages").mkdir()
    (tmp_path / "web" / "error-pages" / "404.html").write_text("<h1>custom 404</h1>")
    gw = Gateway(load_config(tmp_path / "conf" / "gateway-config.xml"))
    await gw.start()
    try:
        url = f"http://127.0.0.1:{gw.port_of('echo')}"
        async with http.get(url + "/") as response:  # no index.html: a listing, names escaped
            listing = await response.text()
            assert response.status == 200 and 'href="js/"' in listing and "docs &lt;b&gt;/" in listing
        async with http.get(url + "/js", allow_redirects=False) as response:
            assert response.status == 301 and response.headers["Location"] == "/js/"
        async with http.get(url + "/js/app.js") as response:
            assert response.headers["Cache-Control"] == "max-age=60"
            assert response.headers["Content-Type"].startswith("text/javascript")
        async with http.get(url + "/absent.html") as response:
            assert response.status == 404 and "custom 404" in await response.text()
        async with http.ws_connect(
            url.replace("http", "ws") + "/echo", headers={"Origin": "http://other.example"}
        ) as ws:
            await ws.send_str("any origin allowed by *")
            assert (await ws.receive()).data == "any origin allowed by *"
    finally:
        await gw.stop(1)


@pytest.mark.parametrize(
    ("request_head", "statuses"),
    [
        # No Sec-WebSocket-Key.
        (
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            (b"400",),
        ),
        # Unsupported protocol version.
        (
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 5\r\n\r\n",
            (b"400", b"426"),
        ),
        # A header line far beyond the limit.
        (b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", (b"400", b"431")),
        # Not HTTP at all.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n", (b"400",)),
    ],
    ids=["no-key", "version-5", "huge-header", "tls-to-plain-port"],
)
async def test_malformed_upgrades_get_a_clear_status_and_the_gateway_keeps_serving(
    start_gateway, http, request_head, statuses
):
    gw = await start_gateway(ECHO)
    port = gw.port_of("echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split(b" ")[1] in statuses, status_line
    async with http.ws_connect(f"ws://127.0.0.1:{port}/echo") as ws:
        await ws.send_str("still serving")
        assert (await ws.receive()).data == "still serving"


CORS_SITE = """
service:
  - name: site
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: /site
      welcome-file: index.html
    cross-site-constraint:
      allow-origin: http://app.example:8080
      allow-methods: GET
      allow-headers: X-Custom
      maximum-age: 60
"""


@pytest.mark.parametrize(
    ("origin", "method", "headers", "status"),
    [
        ("http://app.example:8080", "GET", "X-Custom", 204),
        ("http://app.example:8080", "GET", None, 204),
        ("http://evil.example", "GET", None, 403),
        ("http://app.example:8080", "DELETE", None, 403),
        ("http://app.example:8080", "GET", "Authorization", 403),
        (None, "GET", None, 403),
    ],
    ids=["allowed", "no-headers", "other-origin", "method-not-listed", "header-not-listed", "no-origin"],
)
async def test_cors_preflight_follows_the_cross_site_constraint(
    start_gateway, http, site, origin, method, headers, status
):
    gw = await start_gateway(CORS_SITE)
    request_headers = {"Access-Control-Request-Method": method}
    if origin:
        request_headers["Origin"] = origin
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    async with http.options(f"http://127.0.0.1:{gw.port_of('site')}/", headers=request_headers) as response:
        assert response.status == status
        if status == 204:
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
            assert response.headers["Access-Control-Allow-Methods"] == "GET"
            assert response.headers["Access-Control-Max-Age"] == "60"
        else:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_cross_origin_reads_are_granted_only_to_listed_origins(start_gateway, http, site):
    gw = await start_gateway(CORS_SITE)
    base = f"http://127.0.0.1:{gw.port_of('site')}/"
    async with http.get(base, headers={"Origin": "http://app.example:8080"}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.example:8080"
        assert response.headers["Vary"] == "Origin"
    async with http.get(base, headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers


HIDDEN_SITE = """
service:
  - name: site
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: /site
      welcome-file: index.html
      options: indexes
"""


@pytest.fixture
def hidden_site(site: Path) -> Path:
    """A site as deployed from a checkout: .git/, .env, .htpasswd beside the public files."""
    (site / ".git").mkdir()
    (site / ".git" / "config").write_text("[remote] url = https://deploy:secret@git.example")
    (site / ".env").write_text("DB_PASSWORD=secret")
    (site / "sub" / ".htpasswd").write_text("admin:$apr1$secret")
    (site / "sub" / "public.txt").write_text("public")
    (site / "innocent").symlink_to(site / ".env")
    return site


async def raw_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    return response


def without_date(response: bytes) -> bytes:
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.lower().startswith(b"date:"))


@pytest.mark.parametrize(
    "path",
    [
        "/.env",
        "/.git/config",
        "/.git/",
        "/.git",
        "/%2egit/config",
        "/%2Eenv",
        "/sub/.htpasswd",
        "/sub/%2ehtpasswd",
        "/sub/./.htpasswd",
        "/innocent",
    ],
)
async def test_directory_hides_dot_files_like_missing_ones(start_gateway, hidden_site, path):
    gw = await start_gateway(HIDDEN_SITE)
    port = gw.port_of("site")
    response = await raw_get(port, path)
    assert b"secret" not in response
    assert without_date(response) == without_date(await raw_get(port, "/no-such-file")), response[:80]


async def test_directory_listings_leave_dot_files_out(start_gateway, http, hidden_site):
    gw = await start_gateway(HIDDEN_SITE)
    async with http.get(f"http://127.0.0.1:{gw.port_of('site')}/sub/") as response:
        body = await response.text()
    assert response.status == 200 and "public.txt" in body and ".htpasswd" not in body


async def test_directory_serves_dot_files_when_allowed_and_the_client_path_still_works(
    start_gateway, http, hidden_site
):
    gw = await start_gateway(HIDDEN_SITE + "      hidden-files: allow\n")
    base = f"http://127.0.0.1:{gw.port_of('site')}"
    async with http.get(base + "/.env") as response:
        assert response.status == 200 and await response.text() == "DB_PASSWORD=secret"
    async with http.get(base + "/sub/") as response:
        assert ".htpasswd" in await response.text()
    hidden = await start_gateway(HIDDEN_SITE, name="hidden.yaml")
    async with http.get(f"http://127.0.0.1:{hidden.port_of('site')}/.wsgate/client.js") as response:
        assert response.status == 200  # the listener's own well-known path is not a dot-file of the site
