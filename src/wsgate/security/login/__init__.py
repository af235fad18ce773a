"""Login modules, collected from their declarations, and the factory that builds them from ``login-module``
elements.

Each module type declares itself (``TYPE = LoginModuleType(...)`` on its class, or in ``unsupported.py``);
adding one means declaring it there and listing it in ``LOGIN_MODULES``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType

from ...config.model import LoginModule as LoginModuleConfig
from ...config.model import Realm
from ...core.fetch import FetchJson, HttpPort
from ...errors import ConfigError
from . import unsupported
from .base import Busy, Challenged, Failed, LoginAttempt, LoginModule, LoginModuleType, Outcome, Succeeded, Unavailable
from .certificate import CertificateLoginModule
from .chain import ChainEntry, ChainResult, run_chain
from .file import FileLoginModule
from .jwt import JwtLoginModule
from .kerberos import GssLoginModule, Kerberos5LoginModule
from .ldap import LdapLoginModule
from .oidc import OidcLoginModule

__all__ = [
    "Busy",
    "ChainEntry",
    "Challenged",
    "ChainResult",
    "Failed",
    "LoginAttempt",
    "LOGIN_MODULES",
    "LoginModule",
    "LoginModuleType",
    "Outcome",
    "Succeeded",
    "Unavailable",
    "build_module",
    "check_chain",
    "run_chain",
]

# In the order messages list them ("valid: file, ldap, kerberos5, ...").
LOGIN_MODULES: Mapping[str, LoginModuleType] = MappingProxyType(
    {
        t.name: t
        for t in (
            FileLoginModule.TYPE,
            LdapLoginModule.TYPE,
            Kerberos5LoginModule.TYPE,
            GssLoginModule.TYPE,
            unsupported.JNDI,
            unsupported.KEYSTORE,
            JwtLoginModule.TYPE,
            CertificateLoginModule.TYPE,
            OidcLoginModule.TYPE,
        )
    }
)


def check_chain(realm: Realm, path: str) -> None:
    """What no single module can check: the scheme its realm challenges with, the module it needs before it."""
    base = (realm.authentication.http_challenge_scheme or "").lower().removeprefix("application ").strip()
    seen: set[str] = set()
    for index, module in enumerate(realm.authentication.login_modules):
        kind = LOGIN_MODULES.get(module.type)
        element = f"{path}/login-module[{index + 1}]"
        if kind is not None and kind.scheme is not None and kind.scheme != base:
            wanted = kind.scheme.capitalize()
            raise ConfigError(
                f"{path.rpartition('/login-modules')[0]}/http-challenge-scheme",
                f"the {module.type} login module ({element}) reads 'Authorization: {wanted}': "
                f"set http-challenge-scheme to {wanted} or Application {wanted}",
            )
        if kind is not None and kind.after is not None and kind.after not in seen:
            raise ConfigError(
                f"{element}/type",
                f"{module.type} confirms what a {kind.after} login module before it validated: "
                f"put a {kind.after} login-module before it",
            )
        if kind is not None and kind.sessions and realm.authentication.authorization_mode != "recycle":
            raise ConfigError(
                f"{path.rpartition('/login-modules')[0]}/authorization-mode",
                f"the {module.type} login module ({element}) signs browsers in with the realm session cookie: "
                "set authorization-mode to recycle",
            )
        seen.add(module.type)


def build_module(
    config: LoginModuleConfig,
    path: str,
    base_dir: Path,
    fetch_json: FetchJson | None = None,
    http: HttpPort | None = None,
) -> LoginModule:
    """A module for one ``login-module`` element; errors name the element. ``fetch_json`` is for modules
    that fetch documents (a JWKS), ``http`` for those that also POST (an OpenID provider's token endpoint)."""
    if config.type.startswith("class:"):
        return _custom(config.type[len("class:") :], config.options, path, base_dir)
    return LOGIN_MODULES[config.type].create(config.options, path, base_dir, fetch_json, http)


def import_beside(module_name: str, config_dir: Path) -> ModuleType:
    """Import a ``class:`` module from the usual ``sys.path``, else from the config file's folder.

    The folder is appended to ``sys.path`` (and stays there, for what the module imports later), so a file
    there never shadows the standard library, wsgate or an installed package of the same name. A module is
    imported once per process: a reload does not re-read a changed one (restart the gateway).
    """
    folder = str(config_dir)
    if folder not in sys.path:
        sys.path.append(folder)
        importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _custom(target: str, options: Mapping[str, str], path: str, base_dir: Path) -> LoginModule:
    """``class:package.module.Name``: constructed as ``Name(options)``; needs ``async login(attempt)``."""
    module_name, _, class_name = target.rpartition(".")
    if not module_name:
        raise ConfigError(f"{path}/type", f"'class:{target}' must name package.module.ClassName")
    try:
        cls = getattr(import_beside(module_name, base_dir), class_name)
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
