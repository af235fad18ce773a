"""A WebSocket client for the layered-DMZ tests, run inside the client namespace by tests/netns.py.

``python netns_client.py SPEC_JSON`` (see ``Topology.client_ws``) prints one JSON line: the HTTP status (101,
or the refusal's), the messages received, the server's close code, an error text, the seconds it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from typing import Any

import aiohttp


def _context(spec: dict[str, Any]) -> ssl.SSLContext | bool:
    if not spec["url"].startswith("wss:"):
        return True
    context = ssl.create_default_context(cafile=spec["ca"]) if spec["ca"] else ssl.create_default_context()
    if spec["cert"]:
        context.load_cert_chain(spec["cert"])
    return context


def _record(result: dict[str, Any], message: aiohttp.WSMessage, keep: bool) -> bool:
    """Count a data message (and keep its text if ``keep``); False when the connection ended (close code noted)."""
    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        data = message.data
        result["received"] += len(data)
        if keep:
            result["messages"].append(data if isinstance(data, str) else data.decode("latin-1"))
        return True
    if message.type is aiohttp.WSMsgType.CLOSE:
        result["close_code"] = message.data
    return False


async def talk(spec: dict[str, Any], result: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(spec["url"], headers=spec["headers"], ssl=_context(spec), autoclose=False) as ws,
    ):
        result["status"] = 101
        print("connected", flush=True)
        for text in spec["send"]:
            await ws.send_str(text)
        while len(result["messages"]) < spec["expect"]:
            if not _record(result, await ws.receive(), keep=True):
                result["close_code"] = result["close_code"] or ws.close_code
                return
        if spec["hold"]:
            await asyncio.sleep(spec["hold"])  # reading nothing: the transport pauses once aiohttp's buffer fills
        if spec["drain"]:
            end = asyncio.get_running_loop().time() + spec["drain"]
            with contextlib.suppress(TimeoutError):
                while (left := end - asyncio.get_running_loop().time()) > 0:
                    if not _record(result, await asyncio.wait_for(ws.receive(), left), keep=False):
                        result["close_code"] = result["close_code"] or ws.close_code
                        return
        if spec["wait_close"]:
            while _record(result, await ws.receive(), keep=True):
                pass
            result["close_code"] = result["close_code"] or ws.close_code
            return
        await ws.close()


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"status": None, "messages": [], "received": 0, "close_code": None, "error": None}
    started = time.monotonic()
    try:
        await asyncio.wait_for(talk(spec, result), spec["timeout"])
    except aiohttp.WSServerHandshakeError as exc:
        result["status"] = exc.status
        result["error"] = f"handshake: {exc.status} {exc.message}"
    except TimeoutError:
        result["error"] = "timeout"
    except (aiohttp.ClientError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["elapsed"] = round(time.monotonic() - started, 3)
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
