"""WebSocket emulation (WSE) on loopback: real HTTP clients against a started gateway.

Each test names the k3po script (``specification/wse/src/main/scripts/org/kaazing/specification/wse/…``)
whose server side it checks, where there is one.
"""

from __future__ import annotations

from .wse_client import WseClient

ECHO = """
service:
  - name: echo
    accept: ws://127.0.0.1:0/echo
    type: echo
"""


def base(gw, service: str, path: str | None = None) -> str:
    return f"http://127.0.0.1:{gw.port_of(service)}/{path or service}"


async def test_echo_text_and_binary_over_a_streaming_downstream(start_gateway, http):
    """data/echo.text.payload.length.127, data/echo.binary.payload.length.128, closing/client.send.close."""
    gw = await start_gateway(ECHO)
    client = WseClient(http, base(gw, "echo"))
    created = await client.create()
    assert created.status == 201
    assert client.upstream.startswith(base(gw, "echo") + "/") and client.downstream.startswith(base(gw, "echo") + "/")
    down = await client.open()
    assert down.response.status == 200
    assert down.response.headers["Content-Type"] == "application/octet-stream"
    assert down.response.headers["Connection"] == "close"
    assert "Transfer-Encoding" not in down.response.headers
    text, binary = "é" * 127, bytes(range(128))
    assert await client.send(text, binary) == 200
    assert await down.data() == text
    assert await down.data() == binary
    assert await client.close() == 200
    assert await down.rest() == [("cmd", "02"), ("cmd", "01")]
