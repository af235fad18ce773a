"""wsgate as users install it: a wheel in a fresh venv, away from the source tree, walked through as the README
and docs/ show it (their configs, the default config, and every command their ``sh`` blocks show).

An editable install reads resources from src/, so a file missing from the package data goes unnoticed
there (``check-config`` once failed on an installed wheel: no resources/management/console.html).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest

from .test_config import example_files, make_stores, yaml_blocks

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)  # the first install may fetch dependencies into pip's cache
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Programs the docs' commands may name besides wsgate's own and make: add one here when a page starts using it.
OTHER_TOOLS = {"curl"}


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
    readme_config = next(text for where, text in yaml_blocks() if where == "README.md#1")
    (tmp_path / "my-gateway.yaml").write_text(readme_config)
    ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    # As the README shows it; its host (gateway.example.com) resolves where it is deployed, not here.
    result = run(installed / "wsgate", "check-config", "my-gateway.yaml", "--no-resolve", cwd=tmp_path)
    assert "my-gateway.yaml: OK, 1 service(s)" in result.stdout
    run(installed / "wsgate", "default-config", tmp_path / "scaffold", cwd=tmp_path)
    assert (
        "OK, 3 service(s)" in run(installed / "wsgate", "check-config", tmp_path / "scaffold" / "gateway.yaml").stdout
    )


async def test_installed_gateway_serves_the_default_config_and_stops_on_sigterm(installed, tmp_path):
    """``make run``'s gateway, on a free port: reached as localhost and 127.0.0.1 alike."""
    process = await asyncio.create_subprocess_exec(
        str(installed / "wsgate"),
        "run",
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
            if match := re.search(r"listening on tcp://localhost:(\d+)", line):
                port = int(match.group(1))
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/.wsgate/client.js"):  # the demo page and the browser client, from the package
                async with http.get(base + path) as response:
                    assert response.status == 200, path
            async with http.get(f"http://localhost:{port}/") as response:
                assert response.status == 200
            async with http.get(base, headers={"Host": "wrong.example"}) as response:
                assert response.status == 404
                assert "it serves: localhost, 127.0.0.1, [::1]" in await response.text()
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


def shell_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of every command in the ``sh`` blocks of README.md and docs/*.md, comments left out."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():  # a line continued with \ is one command
                command = re.sub(r"(^|\s)#.*$", "", line).strip()
                if command:
                    commands.append((page.name, shlex.split(command)))
    return commands


def test_every_command_the_docs_show_exists(installed):
    """Subcommands and options per the installed ``--help``, make targets per the Makefile; the README writes
    the venv's path (``make run`` made it), the other pages the bare name (README.md says so)."""
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    helps: dict[tuple[str, ...], str] = {}

    def usage(*command: str) -> str:
        if command not in helps:
            helps[command] = run(installed / command[0], *command[1:], "--help").stdout
        return helps[command]

    commands = shell_commands()
    assert {"wsgate", ".venv/bin/wsgate", "wsgate-client", "make"} <= {words[0] for _, words in commands}
    for page, words in commands:
        where = f"{page}: {shlex.join(words)}"
        program, arguments = words[0], [word.strip("[]") for word in words[1:]]
        if program == "make":
            assert all(word in targets for word in arguments if "=" not in word), f"{where}: no such make target"
            continue
        name = program.removeprefix(".venv/bin/")
        if name not in ("wsgate", "wsgate-client"):
            assert name in OTHER_TOOLS, f"{where}: {name} is no wsgate command, make target or known tool"
            continue
        expected = f".venv/bin/{name}" if page == "README.md" else name
        assert program == expected, f"{where}: write {expected} on this page"
        if name == "wsgate" and arguments[0].startswith("-"):  # an option of the program itself: --version
            assert re.search(rf"(^|[\s\[]){re.escape(arguments[0])}([\s\]]|$)", usage("wsgate"), re.M), (
                f"{where}: no such option"
            )
            continue
        if name == "wsgate":
            commands_listed = re.search(r"\{([\w,-]+)\}", usage("wsgate"))
            assert commands_listed and arguments[0] in commands_listed.group(1).split(","), f"{where}: no such command"
            text = usage("wsgate", arguments[0])
        else:
            text = usage("wsgate-client")
        for option in (word.split("=", 1)[0] for word in arguments if word.startswith("-")):
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}([\s,=\]]|$)", text, re.M), f"{where}: no {option}"
