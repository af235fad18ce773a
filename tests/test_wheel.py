"""wsgate as users install it: a wheel in a fresh venv, away from the source tree.

An editable install reads resources from src/, so a file missing from the package data goes unnoticed
there (``check-config`` once failed on an installed wheel: no resources/management/console.html).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest

from .test_config import example_files, make_stores

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)  # the first install may fetch dependencies into pip's cache


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: the installed package, not this tree, must be imported."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A wheel built from a copy of the sources (no stale build/ or egg-info of the work tree in it), and
    what the build printed (the build backend's warnings included)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", root / "dist", source)
    return next((root / "dist").glob("wsgate-*.whl")), result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(build: tuple[Path, str]) -> Path:
    return build[0]


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """bin/ of a fresh venv with the wheel and its dependencies (from pip's usual index and cache)."""
    venv = wheel.parent.parent / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    return venv / "bin"


def test_the_wheel_builds_without_deprecation_warnings(build):
    _, output = build
    warnings = [line.strip() for line in output.splitlines() if re.search(r"deprecat|Warning", line, re.I)]
    assert not warnings, "the build backend warns (pyproject.toml):\n" + "\n".join(warnings)
    with zipfile.ZipFile(build[0]) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in metadata


def test_the_wheel_holds_every_resource(wheel):
    resources = REPO / "src" / "wsgate" / "resources"
    expected = {f"wsgate/resources/{p.relative_to(resources).as_posix()}" for p in resources.rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as archive:
        missing = expected - set(archive.namelist())
    assert not missing, f"add these to [tool.setuptools.package-data] in pyproject.toml: {sorted(missing)}"


def test_installed_check_config_passes_every_docs_example(installed, tmp_path, ca):
    shutil.copytree(REPO / "docs" / "examples", tmp_path, dirs_exist_ok=True)
    kaazing = shutil.which("keytool") is not None
    make_stores(tmp_path, ca, kaazing)
    for example in example_files():
        if "JCEKS" in example.read_text() and not kaazing:
            continue  # keytool makes its stores; test_config skips it too
        if "kerberos5" in example.read_text():  # the wheel without its kerberos extra: a clear way out
            failed = subprocess.run(
                [installed / "wsgate", "check-config", tmp_path / example.name],
                cwd=tmp_path,
                env=clean_env(),
                capture_output=True,
                text=True,
            )
            assert failed.returncode == 2 and "pip install 'wsgate[kerberos]'" in failed.stderr, failed.stderr
            continue
        result = run(installed / "wsgate", "check-config", tmp_path / example.name, cwd=tmp_path)
        assert f"{tmp_path / example.name}: OK" in result.stdout
    run(installed / "wsgate", "default-config", tmp_path / "scaffold", cwd=tmp_path)
    assert (
        "OK, 3 service(s)" in run(installed / "wsgate", "check-config", tmp_path / "scaffold" / "gateway.yaml").stdout
    )


async def test_installed_gateway_serves_the_default_config_and_stops_on_sigterm(installed, tmp_path):
    process = await asyncio.create_subprocess_exec(
        str(installed / "wsgate"),
        "run",
        "-D",
        "gateway.hostname=127.0.0.1",
        "-D",
        "gateway.port=0",
        cwd=tmp_path,
        env=clean_env(),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
            assert line, "the installed wsgate exited before listening"
            if match := re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/.wsgate/client.js"):  # the demo page and the browser client, from the package
                async with http.get(base + path) as response:
                    assert response.status == 200, path
            async with http.ws_connect(f"ws://127.0.0.1:{port}/echo") as ws:
                await ws.send_str("from the wheel")
                assert (await asyncio.wait_for(ws.receive(), 5)).data == "from the wheel"
                process.send_signal(signal.SIGTERM)
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
