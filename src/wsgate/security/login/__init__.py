"""Login modules and the factory that builds them from ``login-module`` elements."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path

from ...config.model import LoginModule as LoginModuleConfig
from ...errors import ConfigError
from .base import Busy, Challenged, Failed, LoginAttempt, LoginModule, Outcome, Succeeded, Unavailable
from .certificate import CertificateLoginModule
from .chain import ChainEntry, ChainResult, run_chain
from .file import FileLoginModule
from .jwt import JwtLoginModule
from .ldap import LdapLoginModule

__all__ = [
    "Busy",
    "ChainEntry",
    "Challenged",
    "ChainResult",
    "Failed",
    "LoginAttempt",
    "LoginModule",
    "Outcome",
    "Succeeded",
    "Unavailable",
    "build_module",
    "run_chain",
]

Factory = Callable[[Mapping[str, str], str, Path], LoginModule]
BUILT_IN: dict[str, Factory] = {
    "file": FileLoginModule,
    "jwt": JwtLoginModule,
    "certificate": CertificateLoginModule,
    "ldap": LdapLoginModule,
}
NOT_YET = ("kerberos5", "gss", "jndi", "keystore")


def build_module(config: LoginModuleConfig, path: str, base_dir: Path) -> LoginModule:
    """A module for one ``login-module`` element; errors name the element."""
    if config.type.startswith("class:"):
        return _custom(config.type[len("class:") :], config.options, path, base_dir)
    if config.type in NOT_YET:
        raise ConfigError(f"{path}/type", f"the {config.type} login module is not supported yet")
    return BUILT_IN[config.type](config.options, path, base_dir)


def _custom(target: str, options: Mapping[str, str], path: str, base_dir: Path) -> LoginModule:
    """``class:package.module.Name``: constructed as ``Name(options)``; needs ``async login(attempt)``."""
    module_name, _, class_name = target.rpartition(".")
    if not module_name:
        raise ConfigError(f"{path}/type", f"'class:{target}' must name package.module.ClassName")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ConfigError(f"{path}/type", f"cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ConfigError(f"{path}/type", f"module {module_name!r} has no {class_name!r}") from None
    try:
        instance = cls(dict(options))
    except Exception as exc:  # the operator's code: report whatever it raised, located
        raise ConfigError(f"{path}/options", f"{target}(options) failed: {exc}") from None
    if not isinstance(instance, LoginModule):
        raise ConfigError(f"{path}/type", f"{target} has no 'async def login(self, attempt)' method")
    return instance
