"""Every service type and login module wsgate knows, collected from their own declarations.

A type declares itself in its own module (``TYPE = ServiceType(...)`` on a service handler class,
``TYPE = LoginModuleType(...)`` on a login module class); adding one means declaring it there and
listing it here (or, for a login module, in ``security/login/__init__.py``). The config builder gets
this catalog as a parameter: ``config/`` sits below the services and cannot import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from . import config
from .config.build import build_config as _build_config
from .config.model import GatewayConfig
from .config.schema import Catalog
from .config.tree import Node
from .management.service import ManagementService, MetricsService
from .security.login import LOGIN_MODULES, LoginModuleType
from .services.amqp_proxy import AmqpProxyService
from .services.base import ServiceType
from .services.broadcast import BroadcastService
from .services.directory import DirectoryService
from .services.dmz import TunnelEndpoint
from .services.echo import EchoService
from .services.kdc_proxy import KdcProxyService
from .services.mqtt.proxy import MqttProxyService
from .services.proxy import ProxyService

# In the order messages list them ("valid: echo, directory, ...").
SERVICE_TYPES: Mapping[str, ServiceType] = MappingProxyType(
    {
        t.name: t
        for t in (
            EchoService.TYPE,
            DirectoryService.TYPE,
            ProxyService.TYPE,  # direct, or either end of a DMZ tunnel (services/dmz.py)
            BroadcastService.TYPE,
            ManagementService.TYPE,
            MetricsService.TYPE,
            KdcProxyService.TYPE,
            AmqpProxyService.TYPE,
            MqttProxyService.TYPE,
        )
    }
)
# Kaazing service types wsgate does not implement: "not supported yet" rather than "not a service type".
_NOT_YET = (
    "balancer",
    "http.proxy",
    "http.redirect",
    "turn.rest",
    "management.jmx",
    "update.check",
    "jms",
    "jms.proxy",
    "redis",
    "ibmmq",
    "session",
    "management.snmp",
)
# Kaazing Enterprise's ticket-granting gateway: deprecated there in 2015, its WebSocket framing never published,
# its only clients Kaazing's closed Enterprise challenge handlers. Standard clients (MIT kinit, Windows) speak
# MS-KKDCP over HTTPS to a kdc.proxy service instead.
KERBEROS5_PROXY = (
    "Kaazing's deprecated ticket-granting gateway has no clients wsgate can serve; use type kdc.proxy, the "
    "standard KDC proxy (MS-KKDCP) that MIT kinit and Windows speak: accept https://host:port/KdcProxy, the same "
    "connect tcp://kdc:88, the property realm, and kdc = https://host:port/KdcProxy in the clients' krb5.conf"
)
# ... and what to use instead, where there is something.
UNSUPPORTED_SERVICE_TYPES: Mapping[str, str] = MappingProxyType(
    {**dict.fromkeys(_NOT_YET, ""), "kerberos5.proxy": KERBEROS5_PROXY}
)
CATALOG = Catalog.of(tuple(SERVICE_TYPES.values()), tuple(LOGIN_MODULES.values()), UNSUPPORTED_SERVICE_TYPES)

__all__ = [
    "CATALOG",
    "LOGIN_MODULES",
    "SERVICE_TYPES",
    "LoginModuleType",
    "ServiceType",
    "build_config",
    "load_config",
    "load_default_config",
    "service_type",
]


# Types the config builder makes and no config file names: a DMZ gateway's tunnel listener (docs/dmz.md).
BUILT_SERVICE_TYPES: Mapping[str, ServiceType] = MappingProxyType({TunnelEndpoint.TYPE.name: TunnelEndpoint.TYPE})


def service_type(name: str) -> ServiceType:
    """The declaration of a configured service's type (the config builder has checked the name)."""
    return SERVICE_TYPES[name] if name in SERVICE_TYPES else BUILT_SERVICE_TYPES[name]


def load_config(path: str | Path, overrides: Mapping[str, str] | None = None) -> GatewayConfig:
    """``config.load_config`` with every declared type: load and fully validate a config file."""
    return config.load_config(path, overrides, catalog=CATALOG)


def load_default_config(overrides: Mapping[str, str] | None = None) -> GatewayConfig:
    """``config.load_default_config`` with every declared type: the embedded demo config."""
    return config.load_default_config(overrides, catalog=CATALOG)


def build_config(
    root: Node,
    source: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    web_root: Path | None = None,
) -> GatewayConfig:
    """``config.build.build_config`` with every declared type."""
    return _build_config(root, CATALOG, source, overrides, web_root)
