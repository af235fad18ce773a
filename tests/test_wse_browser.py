"""The browser client (``/.wsgate/client.js``) in headless Chromium with WebSocket blocked: it falls back to
WebSocket emulation (WSE) with the same API, and says so (``transport``); with WebSocket allowed it uses one.

WebSocket is blocked by a reverse proxy on loopback that strips ``Upgrade`` (tests/wse_proxy.py), in front
of a gateway serving the page, a protected echo, a protected proxy to a real TCP echo back end, a realm
with a short ``session-timeout`` and one whose user the test revokes. Chromium runs in its own process
(tests/wse_browser.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from .conftest import port_of, tcp_echo_server
from .wse_proxy import BlockingProxy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).parent.parent
WEB = ROOT / "src" / "wsgate" / "resources" / "web"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed (make test installs it)"
)

USERS = """<?xml version="1.0" encoding="UTF-8" ?>
<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">
  <user><name>joe</name><password>welcome</password><role-name>AUTHORIZED</role-name></user>
  <user><name>bob</name><password>builder</password><role-name>AUTHORIZED</role-name></user>
</jaas-config>
"""


def realm(name: str, timeouts: str) -> str:
    return f"""
    - name: {name}
      authentication:
        http-challenge-scheme: Application Basic
        authorization-mode: recycle{timeouts}
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml"""


def protected(name: str, realm_name: str, type_: str = "echo", connect: str = "") -> str:
    return f"""
  - name: {name}
    accept: ws://127.0.0.1:0/{name}
    type: {type_}{connect}
    realm-name: {realm_name}
    authorization-constraint:
      require-role: AUTHORIZED
    accept-options:
      tcp.bind: 127.0.0.1:0"""


def config(backend: int) -> str:
    return (
        """
service:
  - name: demo
    accept: http://127.0.0.1:0/
    type: directory
    properties:
      directory: web
      welcome-file: index.html
    accept-options:
      tcp.bind: 127.0.0.1:0
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
    accept-options:
      tcp.bind: 127.0.0.1:0"""
        + protected("secure-echo", "demo")
        + protected("secure-proxy", "demo", "proxy", f"\n    connect: tcp://127.0.0.1:{backend}")
        + protected("short", "short")
        + protected("revocable", "bobs")
        + "\nsecurity:\n  realm:"
        + realm("demo", "\n        authorization-timeout: 4s")
        + realm("short", "\n        session-timeout: 3s")
        + realm("bobs", "")
        + "\n"
    )


# Every feature at once, on connections side by side; the test revokes bob once "revocable ready" shows.
PAGE = """<!doctype html><script type="module">
import { connect, BasicChallengeHandler } from "/.wsgate/client.js";
const log = (line) => console.log(line);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const show = (d) => typeof d === "string" ? `text ${d}` : `binary ${[...new Uint8Array(d)].join(",")}`;

async function open(path, user, password) {
  const inbox = [], waiting = [];
  let closed;
  const done = new Promise((resolve) => { closed = resolve; });
  const started = Date.now();
  const socket = await connect(`ws://${location.host}${path}`, {
    challengeHandler: new BasicChallengeHandler(async () => ({ user, password })),
    binaryType: "arraybuffer",
    refreshMargin: 2,
    onmessage: (e) => (waiting.length ? waiting.shift()(e.data) : inbox.push(e.data)),
    onclose: (e) => closed({ code: e.code, reason: e.reason, after: (Date.now() - started) / 1000 }),
    onerror: (error) => log(`${path} renewal failed ${error.message}`),
  });
  socket.next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiting.push(r));
  socket.closed = done;
  log(`${path} transport ${socket.transport}`);
  return socket;
}

async function echo(path, socket) {
  socket.send("h\\u00e9llo");
  log(`${path} ${show(await socket.next())}`);
  socket.send(Uint8Array.of(0, 1, 2, 255));
  log(`${path} ${show(await socket.next())}`);
}

// Two concurrent sign-ins to one realm would make two sessions (the cookie names only the last): one at a time.
let signedIn;
const demoSession = new Promise((resolve) => { signedIn = resolve; });
const runs = {
  async "/secure-echo"() {  // renewed in place past its 4 s authorization-timeout
    const s = await open("/secure-echo", "joe", "welcome").finally(signedIn);
    await echo("/secure-echo", s);
    await sleep(6000);
    s.send("after 6 s");
    log(`/secure-echo ${show(await s.next())}`);
    s.close(1000, "bye");
    const e = await s.closed;
    log(`/secure-echo closed ${e.code} ${e.reason}`);
  },
  async "/secure-proxy"() {  // to the TCP echo back end
    await demoSession;
    const s = await open("/secure-proxy", "joe", "welcome");
    s.send(Uint8Array.of(7, 0, 255));
    log(`/secure-proxy ${show(await s.next())}`);
    s.close();
  },
  async "/short"() {  // session-timeout 3 s
    const s = await open("/short", "joe", "welcome");
    await echo("/short", s);
    const e = await s.closed;
    log(`/short closed ${e.code} after ${Math.round(e.after)} s`);
  },
  async "/revocable"() {
    const s = await open("/revocable", "bob", "builder");
    log("revocable ready");
    const e = await s.closed;
    log(`/revocable closed ${e.code}`);
  },
};
await Promise.all(Object.entries(runs).map(([path, run]) => run().catch((e) => log(`${path} error ${e.message}`))));
log("done");
</script>"""


POLL = """<!doctype html><script type="module">
import { connect } from "/.wsgate/client.js";
const inbox = [], waiting = [];
const s = await connect(`ws://${location.host}/echo`, {
  binaryType: "arraybuffer", onmessage: (e) => (waiting.length ? waiting.shift()(e.data) : inbox.push(e.data)) });
const next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiting.push(r));
console.log(`transport ${s.transport}`);
s.send("one");
console.log(`text ${await next()}`);
s.send(Uint8Array.of(1, 2));
console.log(`binary ${[...new Uint8Array(await next())]}`);
await new Promise((resolve) => setTimeout(resolve, 500));
s.send("two");
console.log(`text ${await next()}`);
s.close(4000, "enough");
await connect(`ws://${location.host}/echo`, { transport: "websocket", fallbackTimeout: 2 })
  .then(() => console.log("websocket opened"), (e) => console.log(`websocket only: ${e.message}`));
console.log("done");
</script>"""


async def in_browser(scenario: str, url: str) -> dict:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.wse_browser",
        scenario,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    lines = out.decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": err.decode()[-2000:]}


@pytest.fixture
async def site(tmp_path: Path):
    shutil.copytree(WEB, tmp_path / "web")
    (tmp_path / "web" / "wse.html").write_text(PAGE)
    (tmp_path / "web" / "poll.html").write_text(POLL)
    (tmp_path / "jaas-config.xml").write_text(USERS)
    backend, _ = await tcp_echo_server()
    yield port_of(backend)
    backend.close()


@pytest.fixture
async def proxies():
    started: list[BlockingProxy] = []

    async def start(target: str, buffer: bool = False) -> BlockingProxy:
        proxy = await BlockingProxy(target, buffer=buffer).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


async def revoke_bob_when_ready(gw, count: int) -> list[str]:
    """Once bob has ``count`` connections open (the pages logged "revocable ready"), revoke him; their transports."""
    deadline = time.monotonic() + 30
    while len(bobs := [c for c in gw.runtime.connections if c.identity and c.identity.user == "bob"]) < count:
        assert time.monotonic() < deadline, "bob never connected"
        await asyncio.sleep(0.1)
    assert await gw.revoke(user="bob") == count
    return sorted(c.transport for c in bobs)


def lines_of(result: dict) -> list[str]:
    assert "error" not in result, result
    return result["console"]


async def test_blocked_websocket_falls_back_to_emulation_with_the_same_api(start_gateway, site, proxies):
    gw = await start_gateway(config(site))
    port = gw.port_of("demo")
    proxy = await proxies(f"http://127.0.0.1:{port}")
    seen: dict[str, set[str]] = {}

    async def transports() -> None:  # what the management API shows while the page runs
        while True:
            for c in gw.runtime.connections:
                seen.setdefault(str(c.service), set()).add(c.transport)
            await asyncio.sleep(0.2)

    watching = asyncio.create_task(transports())
    try:
        blocked, direct, revoked = await asyncio.gather(
            in_browser("console", f"http://127.0.0.1:{proxy.port}/wse.html"),
            in_browser("console", f"http://127.0.0.1:{port}/wse.html"),
            revoke_bob_when_ready(gw, 2),
        )
    finally:
        watching.cancel()
    emulated, native = lines_of(blocked), lines_of(direct)
    assert proxy.upgrades >= 4  # each connection tried a WebSocket first, and the proxy let none through
    for lines, transport in ((emulated, "wse"), (native, "websocket")):
        said = "\n".join(lines)
        assert not [line for line in lines if " error " in line or "renewal failed" in line], said
        for path in ("/secure-echo", "/secure-proxy", "/short", "/revocable"):
            assert f"{path} transport {transport}" in lines, said
        for path in ("/secure-echo", "/short"):
            assert f"{path} text héllo" in lines and f"{path} binary 0,1,2,255" in lines, said
        assert "/secure-proxy binary 7,0,255" in lines, said  # through the TCP back end
        assert "/secure-echo text after 6 s" in lines, said  # renewed without disconnecting
        assert any(line.startswith("/secure-echo closed 1000") for line in lines), said
    # The gateway closes with 1008; WSE's CLOSE carries no code, so an emulated close reads 1005.
    for lines, code in ((emulated, 1005), (native, 1008)):
        (short,) = [line for line in lines if line.startswith("/short closed ")]
        assert short.startswith(f"/short closed {code} after ") and 3 <= int(short.split()[-2]) <= 5, short
        assert f"/revocable closed {code}" in lines
    for service in ("secure-echo", "short"):  # one page of each kind, as the management API shows them
        assert seen[service] == {"wse", "websocket"}, seen
    assert revoked == ["websocket", "wse"]


async def test_the_demo_page_shows_its_transport_and_works_with_websocket_blocked(start_gateway, site, proxies):
    gw = await start_gateway(config(site))
    port = gw.port_of("demo")
    proxy = await proxies(f"http://127.0.0.1:{port}")
    blocked, direct = await asyncio.gather(
        in_browser("demo", f"http://127.0.0.1:{proxy.port}/"), in_browser("demo", f"http://127.0.0.1:{port}/")
    )
    for result, transport, words in (
        (blocked, "wse", "transport: WebSocket emulation over HTTP"),
        (direct, "websocket", "transport: WebSocket"),
    ):
        assert "error" not in result, result
        assert f"({transport})" in result["echo-log"] and "< Hello from the demo page" in result["echo-log"], result
        assert f"({transport})" in result["secure-log"] and "< typed in Chromium" in result["secure-log"], result
        assert result["echo-transport"].startswith(words) and result["secure-transport"].startswith(words), result
    assert proxy.upgrades >= 2


async def test_behind_a_buffering_proxy_the_client_long_polls(start_gateway, site, proxies):
    """A proxy that holds each response until it is complete never lets a streaming downstream through: the client
    notices the missing headers, asks for long-polling (``.ki=p``), and gets what the first response held."""
    gw = await start_gateway(config(site))
    proxy = await proxies(f"http://127.0.0.1:{gw.port_of('demo')}", buffer=True)
    result = await in_browser("console", f"http://127.0.0.1:{proxy.port}/poll.html")
    lines = lines_of(result)
    page = [line for line in lines if not line.startswith(("WebSocket connection to", "Failed to load resource"))]
    assert page[:4] == ["transport wse", "text one", "binary 1,2", "text two"], lines
    assert page[4].startswith("websocket only: WebSocket to ws://") and page[5:] == ["done"], lines
    assert any(".ki=p" in path for path in proxy.paths)
