"""Where ``class:package.module.Name`` login modules are imported from: ``sys.path``, then the config's folder."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from wsgate.catalog import load_config
from wsgate.errors import ConfigError
from wsgate.gateway import Gateway

MODULE = """
from wsgate.security.login import Succeeded


class Allow:
    ORIGIN = {origin!r}

    def __init__(self, options):
        self.options = options

    async def login(self, attempt):
        return Succeeded("anyone", frozenset({{"AUTHORIZED"}}))
"""

CONFIG = """
service:
  - name: s
    accept: ws://127.0.0.1:0/s
    type: echo
    realm-name: r
security:
  realm:
    name: r
    authentication:
      login-modules:
        login-module:
          type: class:{module}.Allow
"""


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch):
    """Each test's sys.path and the modules it imported are undone after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(folder: Path, module: str, origin: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(MODULE.format(origin=origin)))


def gateway(config_dir: Path, module: str) -> Gateway:
    (config_dir / "gateway.yaml").write_text(CONFIG.format(module=module))
    return Gateway(load_config(config_dir / "gateway.yaml"))


def test_a_module_beside_the_config_file_is_found(tmp_path):
    write(tmp_path / "conf", "beside_login", "beside the config")
    gateway(tmp_path / "conf", "beside_login")
    assert sys.modules["beside_login"].Allow.ORIGIN == "beside the config"
    assert sys.path[-1] == str(tmp_path / "conf")  # appended: searched last


def test_a_module_beside_the_config_never_shadows_one_on_the_python_path(tmp_path):
    write(tmp_path / "site", "shadowed_login", "installed")
    sys.path.insert(0, str(tmp_path / "site"))
    write(tmp_path / "conf", "shadowed_login", "beside the config")
    gateway(tmp_path / "conf", "shadowed_login")
    assert sys.modules["shadowed_login"].Allow.ORIGIN == "installed"


def test_a_module_found_nowhere_is_a_located_error(tmp_path):
    (tmp_path / "conf").mkdir()
    with pytest.raises(ConfigError, match=r"login-module\[1\]/type: cannot import 'nowhere_login'"):
        gateway(tmp_path / "conf", "nowhere_login")
