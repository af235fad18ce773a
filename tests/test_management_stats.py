"""The console's charts: ``GET <path>/api/stats`` and the vendored charting library under ``<path>/vendor/``.

In memory (``respond``) for what the service decides, then over loopback behind the realm, as the console
reads them. The console itself is driven in Chromium by tests/test_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest

from wsgate.core.handshake import NoBody, Reply
from wsgate.core.session import LiveSession
from wsgate.management import service as management
from wsgate.management.service import ManagementService
from wsgate.observe.metrics import AUTH_BUCKETS, Metrics
from wsgate.services.base import Runtime

from .test_channel_services import FakeChannel, service_config
from .test_management import ADMIN, GATEWAY, JOE, USERS, basic
from .test_management_api import NO_STORE, ROOT, Control, load, request

CONFIG = """
service:
  - name: admin
    accept: http://127.0.0.1:0/admin
    type: management
    properties:
      insecure: true
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
  - name: web
    accept: http://127.0.0.1:0/web
    type: directory
    properties:
      directory: /
"""
VENDOR = Path(management.__file__).parent.parent / "resources" / "management" / "vendor"


@pytest.fixture
def admin(tmp_path: Path) -> ManagementService:
    config = service_config(tmp_path, CONFIG, "admin")
    runtime = Runtime(control=Control(load(tmp_path)))
    runtime.metrics = Metrics(lambda: runtime.connections)
    return ManagementService(config, runtime)


async def stats(admin: ManagementService) -> dict:
    reply = await admin.respond(request("GET", "/admin/api/stats"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 200
    assert reply.headers == (("Content-Type", "application/json; charset=utf-8"), NO_STORE)
    return json.loads(reply.body)


async def test_stats_start_at_zero_for_every_websocket_service(admin):
    answer = await stats(admin)
    assert set(answer) == {"time", "pid", "started", "services", "handshakes", "auth"}
    assert answer["started"] == admin.control.started and answer["pid"] > 0
    # echo accepts WebSockets; admin and web are plain HTTP and have no connections to chart
    assert answer["services"] == [
        {"name": "echo", "open": 0, "messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0}
    ]
    assert answer["handshakes"] == {"101": 0, "401": 0, "403": 0, "429": 0, "503": 0, "other": 0}
    assert answer["auth"] == {"le": list(AUTH_BUCKETS), "buckets": [0] * len(AUTH_BUCKETS), "count": 0, "sum": 0}


async def test_stats_add_up_open_and_closed_connections_handshakes_and_login_times(admin):
    metrics = admin.runtime.metrics
    for outcome in ("101", "101", "403"):
        metrics.handshakes.labels("echo", outcome).inc()
    metrics.handshakes.labels("admin", "401").inc()  # summed over services
    metrics.auth_seconds.labels("corp", "file").observe(0.003)
    metrics.auth_seconds.labels("ldap", "ldap").observe(0.2)  # summed over realms and modules
    metrics.auth_seconds.labels("corp", "file").observe(9.0)  # past the last bound: only in the count
    closed = FakeChannel()
    closed.messages_in, closed.messages_out, closed.bytes_in, closed.bytes_out = 2, 3, 20, 30
    metrics.connection_closed(LiveSession("c-0", "echo", closed, "192.0.2.8"))
    live = FakeChannel()
    live.messages_in, live.messages_out, live.bytes_in, live.bytes_out = 1, 1, 5, 5
    admin.runtime.connections.add(LiveSession("c-1", "echo", live, "192.0.2.9"))

    answer = await stats(admin)
    assert answer["services"] == [
        {"name": "echo", "open": 1, "messages_in": 3, "messages_out": 4, "bytes_in": 25, "bytes_out": 35}
    ]
    assert answer["handshakes"] == {"101": 2, "401": 1, "403": 1, "429": 0, "503": 0, "other": 0}
    auth = answer["auth"]
    assert auth["count"] == 3 and auth["sum"] == pytest.approx(9.203)
    assert (
        dict(zip(auth["le"], auth["buckets"], strict=True))
        == {
            **dict.fromkeys(AUTH_BUCKETS[:3], 0),  # cumulative, as Prometheus' le buckets
            **dict.fromkeys(AUTH_BUCKETS[3:8], 1),
            **dict.fromkeys(AUTH_BUCKETS[8:], 2),
        }
    )


async def test_the_vendored_library_is_served_with_its_type_and_cached_privately(admin):
    for name, content_type in (
        ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("uPlot.min.css", "text/css; charset=utf-8"),
    ):
        reply = await admin.respond(request("GET", f"/admin/vendor/{name}"), ROOT, NoBody())
        assert isinstance(reply, Reply) and reply.status == 200 and reply.file == VENDOR / name
        assert reply.headers == (
            ("Content-Type", content_type),
            ("Cache-Control", "private, max-age=3600"),
            ("X-Content-Type-Options", "nosniff"),
        )
    # only those two files: not the license or the README beside them, nothing outside the folder
    for path in ("/admin/vendor/uPlot-LICENSE", "/admin/vendor/README.md", "/admin/vendor/../console.html"):
        reply = await admin.respond(request("GET", path), ROOT, NoBody())
        assert isinstance(reply, Reply) and reply.status == 404, path
    reply = await admin.respond(request("POST", "/admin/vendor/uPlot.min.css"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 405
    reply = await admin.respond(request("PUT", "/admin/api/stats"), ROOT, NoBody())
    assert isinstance(reply, Reply) and reply.status == 405


def test_the_console_may_run_its_own_script_and_what_it_loads_and_nothing_else():
    page = management.CONSOLE.read_text()
    inline = page.split('<script type="module">', 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    policy = management.CONSOLE_HEADERS["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}' 'strict-dynamic' 'self';" in policy
    assert "style-src 'self' 'unsafe-inline';" in policy and "default-src 'none'" in policy
    assert page.count("<script") == 1  # uPlot is loaded by that script (strict-dynamic), nothing by markup
    assert "vendor/uPlot.iife.min.js" in inline and "vendor/uPlot.min.css" in inline
    banner = (VENDOR / "uPlot.iife.min.js").read_text()[:80]
    version = banner.split("(v", 1)[1].split(")", 1)[0]
    assert f"uPlot **{version}**" in (VENDOR / "README.md").read_text()  # the README names what is vendored
    assert (VENDOR / "uPlot-LICENSE").read_text().startswith("The MIT License")


# -- over loopback, behind the realm ----------------------------------------------------------------


@pytest.fixture
async def gw(start_gateway, tmp_path):
    (tmp_path / "jaas-config.xml").write_text(USERS)
    return await start_gateway(GATEWAY)


async def test_stats_and_vendor_files_answer_administrators_only(gw, http):
    admin = f"http://127.0.0.1:{gw.port_of('admin')}/admin"
    for path in ("/api/stats", "/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css"):
        async with http.get(admin + path) as response:
            assert response.status == 401, path
            assert response.headers["WWW-Authenticate"] == 'Basic realm="corp"'
        async with http.get(admin + path, headers=JOE) as response:
            assert response.status == 403, path
        async with http.get(admin + path, headers=ADMIN) as response:
            assert response.status == 200, path
    async with http.get(f"{admin}/vendor/uPlot.iife.min.js", headers=ADMIN) as response:
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "private, max-age=3600"
        assert await response.read() == (VENDOR / "uPlot.iife.min.js").read_bytes()
        etag = response.headers["ETag"]
    async with http.get(f"{admin}/vendor/uPlot.iife.min.js", headers={**ADMIN, "If-None-Match": etag}) as response:
        assert response.status == 304  # revalidated once the hour is over: nothing sent again


async def test_stats_move_with_traffic(gw, http):
    echo = f"ws://127.0.0.1:{gw.port_of('echo')}/echo"
    admin = f"http://127.0.0.1:{gw.port_of('admin')}/admin"

    async def read() -> dict:
        async with http.get(f"{admin}/api/stats", headers=ADMIN) as response:
            assert response.headers["Cache-Control"] == "no-store"
            return await response.json()

    before = await read()
    assert [s["name"] for s in before["services"]] == ["echo"]
    async with http.ws_connect(echo, headers=JOE) as ws:
        for text in ("one", "two", "three"):
            await ws.send_str(text)
            assert (await asyncio.wait_for(ws.receive(), 3)).data == text
        during = await read()
        assert during["services"][0]["open"] == 1
        assert during["services"][0]["messages_in"] == 3 and during["services"][0]["bytes_out"] == 11
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(echo, headers=basic("joe", "wrong"))  # a refused login
    await asyncio.sleep(0.1)
    after = await read()
    assert after["time"] > before["time"] and after["pid"] == before["pid"]
    assert after["services"][0] == {
        "name": "echo",
        "open": 0,
        "messages_in": 3,
        "messages_out": 3,
        "bytes_in": 11,
        "bytes_out": 11,
    }  # closed connections stay counted
    assert after["handshakes"]["101"] == before["handshakes"]["101"] + 1
    assert after["handshakes"]["403"] == before["handshakes"]["403"] + 1
    assert after["auth"]["count"] >= before["auth"]["count"] + 2  # joe's login and the refused one
