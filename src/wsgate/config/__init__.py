"""Configuration: Kaazing ``gateway-config.xml`` or native YAML → one typed model.

The service types and login modules a config may name come in as a ``Catalog``; ``wsgate.catalog``
collects the declared ones and offers ``load_config`` / ``load_default_config`` bound to them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from .build import build_config
from .loaders import load_tree, parse_yaml
from .model import GatewayConfig
from .schema import Catalog

__all__ = [
    "Catalog",
    "GatewayConfig",
    "default_config_files",
    "default_config_text",
    "load_config",
    "load_default_config",
    "properties_from_env",
]

DEFAULT_CONFIG = "default-config.yaml"


def load_config(path: str | Path, overrides: Mapping[str, str] | None = None, *, catalog: Catalog) -> GatewayConfig:
    """Load and fully validate a config file; raises ``ConfigErrors`` naming each bad element."""
    source = Path(path).resolve()
    return build_config(load_tree(source), catalog, source, overrides)


def _default_config_path() -> Path:
    return Path(str(resources.files("wsgate") / "resources")) / DEFAULT_CONFIG


def load_default_config(overrides: Mapping[str, str] | None = None, *, catalog: Catalog) -> GatewayConfig:
    """The embedded config ``make run`` starts with: echo and a demo page on port 8000."""
    source = _default_config_path()
    return build_config(parse_yaml(source.read_bytes(), str(source)), catalog, source, overrides)


def default_config_text() -> str:
    return _default_config_path().read_text()


def default_config_files() -> dict[str, bytes]:
    """The default config and every file it references, by path relative to the config."""
    folder = _default_config_path().parent
    files = {
        "gateway.yaml": _default_config_path().read_bytes(),
        "jaas-config.xml": (folder / "jaas-config.xml").read_bytes(),
    }
    for page in sorted((folder / "web").iterdir()):
        files[f"web/{page.name}"] = page.read_bytes()
    return files


def properties_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``-Dname=value`` tokens from ``WSGATE_OPTS`` (or Kaazing's ``GATEWAY_OPTS``)."""
    found: dict[str, str] = {}
    for variable in ("GATEWAY_OPTS", "WSGATE_OPTS"):
        for token in shlex.split(environ.get(variable, "")):
            if token.startswith("-D") and "=" in token:
                name, _, value = token[2:].partition("=")
                found[name] = value
    return found
