"""``wsgate run`` as operators start it: a real process, SIGTERM, close 1001, exit 0."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp


async def test_run_serves_until_sigterm_then_closes_with_1001(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text("service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsgate",
        "run",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 10)).decode()
            assert line, "wsgate exited before listening"
            if match := re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/echo") as ws:
            await ws.send_str("before stop")
            assert (await ws.receive()).data == "before stop"
            process.send_signal(signal.SIGTERM)
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_run_with_bad_config_exits_2_with_the_located_error(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text("service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: ecko\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsgate",
        "run",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert b"service[echo]/type: 'ecko' is not a service type" in err
