"""Front ends: Kaazing ``gateway-config.xml`` and native YAML → ``Node`` tree.

XML is parsed with entity expansion and network access off, and any DOCTYPE is
refused outright, so an XML bomb or an external entity never gets expanded.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from lxml import etree

from ..errors import ConfigError
from .tree import Node, node_from_yaml

KAAZING_NAMESPACES = frozenset(
    f"http://xmlns.kaazing.{host}/{version}/gateway"
    for host in ("org", "com")
    for version in ("2014/09", "2015/11", "2016/06")
)
# Kaazing's translators from these older schemas drop a realm-name that has no authorization-constraint
# (the service is then unauthenticated); the 2016/06 schema requires an authenticated user instead.
LEGACY_REALM_NAMESPACES = frozenset(
    f"http://xmlns.kaazing.{host}/{version}/gateway" for host in ("org", "com") for version in ("2014/09", "2015/11")
)
ROOT = "gateway-config"


def load_tree(path: Path) -> Node:
    """Read a config file, choosing the front end by content, not extension."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror}") from None
    if data.lstrip()[:1] == b"<":
        return parse_xml(data, str(path))
    return parse_yaml(data, str(path))


def parse_xml(data: bytes, origin: str = "<xml>") -> Node:
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ConfigError(origin, f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise ConfigError(origin, "DOCTYPE declarations are not allowed in gateway-config.xml (entity expansion risk)")
    qname = etree.QName(root)
    if qname.localname != ROOT:
        raise ConfigError(origin, f"root element is <{qname.localname}>; expected <{ROOT}>")
    if qname.namespace not in KAAZING_NAMESPACES:
        valid = ", ".join(sorted(KAAZING_NAMESPACES))
        raise ConfigError(ROOT, f"namespace {qname.namespace!r} is not supported; use one of {valid}")
    tree = _xml_node(root)
    tree.namespace = qname.namespace
    return tree


def _xml_node(element: etree._Element) -> Node:
    children = [_xml_node(child) for child in element if isinstance(child.tag, str)]
    text = (element.text or "").strip() if not children else ""
    return Node(etree.QName(element).localname, text, children, element.sourceline)  # type: ignore[arg-type]


def parse_yaml(data: bytes, origin: str = "<yaml>") -> Node:
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(origin, f"not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(origin, "a YAML config must be a mapping with keys such as service, security, properties")
    document = document.get(ROOT, document) if len(document) == 1 else document
    if not isinstance(document, dict):
        raise ConfigError(ROOT, "must be a mapping with keys such as service, security, properties")
    return node_from_yaml(ROOT, document)[0]
