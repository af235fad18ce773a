"""``wsgate run`` as operators start it: a real process, SIGTERM, close 1001, exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

import aiohttp


async def wsgate_run(config, *args: str) -> asyncio.subprocess.Process:
    """``wsgate run CONFIG ARGS`` in its own process group (so tests can kill its workers too), stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsgate",
        "run",
        str(config),
        *args,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def test_run_serves_until_sigterm_then_closes_with_1001(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text("service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n")
    process = await wsgate_run(config)
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
    process = await wsgate_run(config)
    _, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert b"service[echo]/type: 'ecko' is not a service type" in err


async def _lines_until(stream: asyncio.StreamReader, pattern: str, count: int) -> list[re.Match[str]]:
    found: list[re.Match[str]] = []
    while len(found) < count:
        line = (await asyncio.wait_for(stream.readline(), 10)).decode()
        assert line, "wsgate exited early"
        if match := re.search(pattern, line):
            found.append(match)
    return found


async def start_workers(tmp_path, port: int, count: int) -> asyncio.subprocess.Process:
    """``wsgate run --workers N`` on an echo service, in its own process group (killed as one by the tests)."""
    config = tmp_path / "g.yaml"
    config.write_text(f"service:\n  - name: echo\n    accept: ws://127.0.0.1:{port}/echo\n    type: echo\n")
    return await wsgate_run(config, "--workers", str(count))


async def test_workers_share_the_port_restart_when_killed_and_stop_together(tmp_path, unused_tcp_port):
    process = await start_workers(tmp_path, unused_tcp_port, 2)
    try:
        workers = await _lines_until(process.stderr, r"worker (\d) started \(pid (\d+)\)", 2)
        await _lines_until(process.stderr, rf"listening on tcp://127\.0\.0\.1:{unused_tcp_port}", 2)
        url = f"ws://127.0.0.1:{unused_tcp_port}/echo"
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(url) for _ in range(16)]
            for ws in sockets:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "hi"
            # A worker that dies is replaced; the other keeps its connections.
            victim = int(workers[0].group(2))
            os.kill(victim, signal.SIGKILL)
            await _lines_until(process.stderr, r"worker 0 \(pid \d+\) exited with -9; restarting", 1)
            await _lines_until(process.stderr, r"worker 0 started", 1)
            await _lines_until(process.stderr, rf"listening on tcp://127\.0\.0\.1:{unused_tcp_port}", 1)
            alive = []
            for ws in sockets:
                try:
                    await ws.send_str("still")
                    alive.append(ws)
                except aiohttp.ClientConnectionResetError:
                    pass  # served by the killed worker
            survivors = []
            for ws in alive:
                msg = await asyncio.wait_for(ws.receive(), 5)
                if msg.type is aiohttp.WSMsgType.TEXT:
                    survivors.append(ws)
            assert survivors, "the surviving worker's connections were lost"
            async with http.ws_connect(url) as fresh:
                await fresh.send_str("new")
                assert (await fresh.receive()).data == "new"
            process.send_signal(signal.SIGTERM)
            for ws in survivors:
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
            for ws in sockets:
                await ws.close()
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the workers too, whatever happened
        except ProcessLookupError:
            pass
        await process.wait()


async def test_workers_refuse_port_zero(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text("service:\n  - name: echo\n    accept: ws://127.0.0.1:0/echo\n    type: echo\n")
    process = await wsgate_run(config, "--workers", "2")
    _, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert b"--workers 2 needs fixed ports" in err


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path, unused_tcp_port):
    process = await start_workers(tmp_path, unused_tcp_port, 2)
    try:
        workers = await _lines_until(process.stderr, r"worker (\d) started \(pid (\d+)\)", 2)
        await _lines_until(process.stderr, "listening on", 2)
        process.kill()
        await process.wait()
        for match in workers:
            pid = int(match.group(2))
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"worker {pid} outlived its supervisor")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_sighup_reloads_and_logs_are_json_lines(tmp_path, unused_tcp_port):
    import json

    config = tmp_path / "g.yaml"
    one = f"service:\n  - name: one\n    accept: ws://127.0.0.1:{unused_tcp_port}/one\n    type: echo\n"
    config.write_text(one)
    process = await wsgate_run(config)
    try:
        line = (await _lines_until(process.stderr, "listening on", 1))[0].string
        record = json.loads(line)  # not a terminal: JSON lines
        assert record["logger"] == "wsgate.listener" and record["level"] == "info" and "timestamp" in record
        await _lines_until(process.stderr, "ready at", 1)
        async with aiohttp.ClientSession() as http:
            kept = await http.ws_connect(f"ws://127.0.0.1:{unused_tcp_port}/one")
            config.write_text(
                one + "  - name: two\n" + f"    accept: ws://127.0.0.1:{unused_tcp_port}/two\n    type: echo\n"
            )
            process.send_signal(signal.SIGHUP)
            await _lines_until(process.stderr, r"configuration reloaded: 1 unchanged, 1 added", 1)
            async with http.ws_connect(f"ws://127.0.0.1:{unused_tcp_port}/two") as two:
                await two.send_str("new")
                assert (await two.receive()).data == "new"
            await kept.send_str("kept")
            assert (await kept.receive()).data == "kept"
            config.write_text("service: [")  # broken: refused, the running config stays
            process.send_signal(signal.SIGHUP)
            await _lines_until(process.stderr, "reload rejected", 1)
            await kept.send_str("still")
            assert (await kept.receive()).data == "still"
            # The reload after one that added a service applies too (it once raised KeyError, unreported).
            three = f"    accept: ws://127.0.0.1:{unused_tcp_port}/three\n    type: echo\n"
            two = f"  - name: two\n    accept: ws://127.0.0.1:{unused_tcp_port}/two\n    type: echo\n"
            config.write_text(one + two + "  - name: three\n" + three)
            process.send_signal(signal.SIGHUP)
            await _lines_until(process.stderr, r"configuration reloaded: 2 unchanged, 1 added", 1)
            await kept.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_workers_whose_port_is_taken_report_the_bind_error_once_and_exit_2(tmp_path, unused_tcp_port):
    taken = socket.socket()  # no SO_REUSEPORT: the workers cannot share this port
    taken.bind(("127.0.0.1", unused_tcp_port))
    taken.listen()
    try:
        process = await start_workers(tmp_path, unused_tcp_port, 2)
        try:
            _, err = await asyncio.wait_for(process.communicate(), 15)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        taken.close()
    message = (
        f"wsgate: service[echo]/accept: cannot bind 127.0.0.1:{unused_tcp_port}: address already in use; "
        "another process listens there: stop it or choose another port\n"
    ).encode()
    assert process.returncode == 2
    assert err.count(b"address already in use") == 1 and err.endswith(message)
    assert b"restarting" not in err and b"Traceback" not in err


async def test_a_worker_that_keeps_dying_is_restarted_later_each_time(tmp_path, unused_tcp_port):
    process = await start_workers(tmp_path, unused_tcp_port, 2)
    try:
        victim = int((await _lines_until(process.stderr, r"worker 0 started \(pid (\d+)\)", 1))[0].group(1))
        await _lines_until(process.stderr, "ready at", 2)  # both serve: start-up is over
        for delay in ("1", "2"):  # doubles while the worker dies soon after each restart
            os.kill(victim, signal.SIGKILL)
            await _lines_until(
                process.stderr, rf"worker 0 \(pid {victim}\) exited with -9; restarting it in {delay}s", 1
            )
            victim = int((await _lines_until(process.stderr, r"worker 0 started \(pid (\d+)\)", 1))[0].group(1))
            await _lines_until(process.stderr, "ready at", 1)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await process.wait()
