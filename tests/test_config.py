"""Config: value formats, Kaazing XML and YAML front ends, located errors, example configs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import trustme

from wsgate.catalog import load_config
from wsgate.cli import main
from wsgate.config import properties_from_env
from wsgate.config.loaders import KAAZING_NAMESPACES
from wsgate.config.values import parse_bind, parse_duration, parse_size, parse_uri
from wsgate.errors import ConfigError, ConfigErrors
from wsgate.gateway import Gateway

from .test_tls import keytool_store, needs_keytool, write_pkcs12

DOCS = Path(__file__).parent.parent / "docs"


# -- value formats (sans I/O) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("30s", 30),
        ("3 minutes", 180),
        ("500ms", 0.5),
        ("1 hour", 3600),
        ("2h", 7200),
        ("1.5 sec", 1.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("1024", 1024), ("64k", 65536), ("64kB", 65536), ("1M", 1048576), ("128K", 131072)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "ten", "5 fortnights", "-1s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


def test_uri_defaults_and_binds():
    uri = parse_uri("wss://Example.COM/echo", ("wss",))
    assert (uri.host, uri.port, uri.path, uri.secure) == ("example.com", 443, "/echo", True)
    assert parse_bind("8000") == (None, 8000)
    assert parse_bind("0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert parse_bind("[::1]:8000") == ("::1", 8000)
    with pytest.raises(ValueError, match="needs a port"):
        parse_uri("tcp://backend", ("tcp",))


# -- loading ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


XML_ECHO = """<?xml version="1.0" encoding="UTF-8" ?>
<gateway-config xmlns="{ns}">
  <properties>
    <property><name>gateway.hostname</name><value>localhost</value></property>
    <property><name>port</name><value>8000</value></property>
  </properties>
  <service>
    <name>echo</name>
    <accept>ws://${{gateway.hostname}}:${{port}}/echo</accept>
    <type>echo</type>
    <accept-options>
      <ws.maximum.message.size>64k</ws.maximum.message.size>
      <ws.inactivity.timeout>3 minutes</ws.inactivity.timeout>
    </accept-options>
  </service>
</gateway-config>
"""

YAML_ECHO = """
properties:
  gateway.hostname: localhost
  port: 8000
service:
  - name: echo
    accept: ws://${gateway.hostname}:${port}/echo
    type: echo
    accept-options:
      ws.maximum.message.size: 64k
      ws.inactivity.timeout: 3 minutes
"""


@pytest.mark.parametrize("namespace", sorted(KAAZING_NAMESPACES))
def test_kaazing_xml_in_every_namespace_loads(tmp_path, namespace):
    config = load_config(write(tmp_path, XML_ECHO.format(ns=namespace), "gateway-config.xml"))
    echo = config.service("echo")
    assert str(echo.accepts[0]) == "ws://localhost:8000/echo"
    assert echo.accept_options.max_message_size == 65536
    assert echo.accept_options.inactivity_timeout == 180


def test_yaml_and_xml_give_the_same_model(tmp_path):
    xml = load_config(write(tmp_path, XML_ECHO.format(ns="http://xmlns.kaazing.org/2016/06/gateway"), "a.xml"))
    yaml = load_config(write(tmp_path, YAML_ECHO, "b.yaml"))
    assert xml.services == yaml.services
    assert dict(xml.properties) == dict(yaml.properties)


def test_properties_are_overridden_by_cli_and_environment(tmp_path, capsys):
    path = write(tmp_path, YAML_ECHO)
    env = properties_from_env({"GATEWAY_OPTS": "-Xmx512m -Dport=9000", "WSGATE_OPTS": "-Dgateway.hostname=gw.test"})
    assert env == {"port": "9000", "gateway.hostname": "gw.test"}
    config = load_config(path, {**env, "port": "9100"})
    assert str(config.service("echo").accepts[0]) == "ws://gw.test:9100/echo"


def test_properties_may_use_other_properties_and_see_overrides(tmp_path):
    path = write(
        tmp_path,
        """
        properties:
          gateway.hostname: localhost
          gateway.url: ws://${gateway.hostname}:8000
        service:
          - name: echo
            accept: ${gateway.url}/echo
            type: echo
        """,
    )
    assert str(load_config(path).service("echo").accepts[0]) == "ws://localhost:8000/echo"
    assert (
        str(load_config(path, {"gateway.hostname": "gw.test"}).service("echo").accepts[0]) == "ws://gw.test:8000/echo"
    )


def test_service_defaults_apply_and_services_override(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
        service:
          - name: a
            accept: ws://localhost:8000/a
            type: echo
          - name: b
            accept: ws://localhost:8000/b
            type: echo
            accept-options:
              ws.maximum.message.size: 1M
        service-defaults:
          accept-options:
            ws.maximum.message.size: 16k
            ws.inactivity.timeout: 30
    """,
        )
    )
    assert config.service("a").accept_options.max_message_size == 16384
    assert config.service("b").accept_options.max_message_size == 1048576
    assert config.service("b").accept_options.inactivity_timeout == 30


def test_tls_aliases_and_insecure_protocols_are_dropped(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
        service:
          - name: a
            accept: ws://localhost:8000/a
            type: echo
            accept-options:
              tls.protocols: TLSv1, TLSv1.1, TLSv1.2
              tls.ciphers: HIGH,!aNULL
    """,
        )
    )
    tls = config.service("a").accept_options.tls
    assert tls.protocols == ("TLSv1.2",) and tls.ciphers == "HIGH,!aNULL"


def test_realms_are_stored_fully(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
        service:
          - name: a
            accept: ws://localhost:8000/a
            type: echo
            realm-name: corp
            authorization-constraint:
              require-role: [TRADER, AUDITOR]
        security:
          realm:
            - name: corp
              description: Corporate
              authentication:
                http-challenge-scheme: Application Token
                http-header: X-Token
                http-query-parameter: token
                http-cookie: sso
                session-timeout: 30 minutes
                authorization-timeout: 5 minutes
                login-modules:
                  login-module:
                    - type: ldap
                      success: requisite
                      options:
                        userProvider: ldap://127.0.0.1:389/ou=people,dc=example,dc=test
                    - type: class:my.module.Custom
                      success: optional
    """,
        )
    )
    realm = config.security.realms["corp"]
    auth = realm.authentication
    assert (auth.http_challenge_scheme, auth.http_headers, auth.http_query_parameters, auth.http_cookies) == (
        "Application Token",
        ("X-Token",),
        ("token",),
        ("sso",),
    )
    assert (auth.session_timeout, auth.authorization_timeout) == (1800, 300)
    assert [(m.type, m.success) for m in auth.login_modules] == [
        ("ldap", "requisite"),
        ("class:my.module.Custom", "optional"),
    ]
    assert auth.login_modules[0].options["userProvider"].startswith("ldap://")
    assert config.service("a").authorization_constraints[0].require_roles == ("TRADER", "AUDITOR")


# -- located errors --------------------------------------------------------------------------

BASE = """
service:
  - name: echo
    accept: ws://localhost:8000/echo
    type: echo
"""

BAD_CONFIGS = [
    (
        "unknown option",
        BASE + "    accept-options:\n      ssl.verify-client: maybe\n",
        "service[echo]/accept-options/ssl.verify-client: 'maybe' is not one of none, optional, required",
    ),
    (
        "misspelled element",
        BASE + "    acept: ws://localhost:8000/x\n",
        "service[echo]/acept: unknown element; did you mean 'accept'?",
    ),
    (
        "bad duration",
        BASE + "    accept-options:\n      ws.inactivity.timeout: soon\n",
        "service[echo]/accept-options/ws.inactivity.timeout: 'soon' is not a duration",
    ),
    (
        "bad size",
        BASE + "    accept-options:\n      ws.maximum.message.size: big\n",
        "service[echo]/accept-options/ws.maximum.message.size: 'big' is not a size",
    ),
    (
        "unknown type",
        BASE.replace("type: echo", "type: chat"),
        "service[echo]/type: 'chat' is not a service type; valid: echo, directory, proxy, broadcast",
    ),
    (
        "unsupported type",
        BASE.replace("type: echo", "type: jms.proxy"),
        "service[echo]/type: service type 'jms.proxy' is not supported yet",
    ),
    (
        "wrong accept scheme",
        BASE.replace("ws://localhost:8000/echo", "tcp://localhost:8000"),
        "service[echo]/accept: 'tcp://localhost:8000': accepting tcp:// (TCP without HTTP or WebSocket) is not supported yet; type echo takes ws://, wss://",
    ),
    (
        "proxy without connect",
        BASE.replace("type: echo", "type: proxy"),
        "service[echo]/connect: a proxy service takes exactly one connect URI, found 0",
    ),
    (
        "connect without port",
        BASE.replace("type: echo", "type: proxy") + "    connect: tcp://backend\n",
        "service[echo]/connect: 'tcp://backend' needs a port",
    ),
    (
        "undefined property",
        BASE.replace("localhost", "${host}"),
        "service[echo]/accept: property ${host} is not defined; add it to <properties> or pass --property host=VALUE",
    ),
    (
        "unknown realm",
        BASE + "    realm-name: corp\n    authorization-constraint:\n      require-valid-user: ''\n",
        "service[echo]/realm-name: unknown realm 'corp' (defined in security: none)",
    ),
    (
        "constraint without realm",
        BASE + "    authorization-constraint:\n      require-role: A\n",
        "service[echo]/authorization-constraint: needs a realm-name on the service",
    ),
    (
        "wss without keystore",
        BASE.replace("ws://", "wss://"),
        "service[echo]/accept: a wss/https accept needs security/keystore",
    ),
    (
        "duplicate service",
        BASE + BASE.replace("service:\n", "").replace("/echo", "/other"),
        "service[echo]: service names must be unique",
    ),
    (
        "duplicate accept",
        BASE + BASE.replace("service:\n", "").replace("name: echo", "name: two"),
        "service[two]/accept: ws://localhost:8000/echo is already accepted by service[echo]",
    ),
    (
        "missing name",
        "service:\n  - accept: ws://localhost:8000/echo\n    type: echo\n",
        "service[?]/name: is required",
    ),
    (
        "bad origin",
        BASE + "    cross-site-constraint:\n      allow-origin: evil.example\n",
        "service[echo]/cross-site-constraint/allow-origin: 'evil.example' is not an origin",
    ),
    (
        "origin with path",
        BASE + "    cross-site-constraint:\n      allow-origin: https://app.example/x\n",
        "service[echo]/cross-site-constraint/allow-origin: 'https://app.example/x' must not have a path",
    ),
    (
        "unsupported option",
        BASE + "    accept-options:\n      tcp.transport: socks://dmz:1080\n",
        "service[echo]/accept-options/tcp.transport: not supported yet in accept-options",
    ),
    (
        "verify-client on connect",
        BASE.replace("type: echo", "type: proxy")
        + "    connect: tcp://b:1\n    connect-options:\n      ssl.verify-client: required\n",
        "service[echo]/connect-options/ssl.verify-client: verify-client belongs in accept-options",
    ),
    (
        "only insecure TLS",
        BASE + "    accept-options:\n      ssl.protocols: SSLv3,TLSv1\n",
        "service[echo]/accept-options/ssl.protocols: 'SSLv3,TLSv1' enables no secure protocol",
    ),
    (
        "bad login module",
        BASE
        + "security:\n  realm:\n    name: r\n    authentication:\n      login-modules:\n        login-module:\n          type: oracle\n",
        "security/realm[r]/authentication/login-modules/login-module[1]/type: 'oracle' is not a login-module type",
    ),
    (
        "bad challenge scheme",
        BASE + "security:\n  realm:\n    name: r\n    authentication:\n      http-challenge-scheme: Digest\n",
        "security/realm[r]/authentication/http-challenge-scheme: 'Digest' is not one of Basic, Application Basic",
    ),
    (
        "missing password file",
        BASE + "security:\n  keystore:\n    file: k.p12\n    password-file: nope.pw\n",
        "security/keystore/password-file: cannot read",
    ),
    (
        "unsupported property",
        BASE.replace("type: echo", "type: proxy")
        + "    connect: tcp://b:1\n    properties:\n      connect.strategy: prepared\n",
        "service[echo]/properties/connect.strategy: 'prepared' is the DMZ end's strategy (its ready tunnels, docs/dmz.md)",
    ),
    ("cluster", BASE + "cluster:\n  name: c\n", "cluster: not supported yet"),
    (
        "directory without directory",
        "service:\n  - name: site\n    accept: http://localhost:8000/\n    type: directory\n",
        "service[site]/properties/directory: is required for this service type",
    ),
    (
        "keep-alive timeout",
        BASE + "    accept-options:\n      http.keepalive.timeout: soon\n",
        "service[echo]/accept-options/http.keepalive.timeout: 'soon' is not a duration",
    ),
    (
        "keep-alive timeout on the connect side",
        BASE + "    connect-options:\n      http.keepalive.timeout: 5s\n",
        "service[echo]/connect-options/http.keepalive.timeout: not supported yet in connect-options",
    ),
    (
        "hidden-files",
        "service:\n  - name: site\n    accept: http://localhost:8000/\n    type: directory\n"
        "    properties:\n      directory: /\n      hidden-files: maybe\n",
        "service[site]/properties/hidden-files: 'maybe' is not one of deny, allow",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_gives_located_message(tmp_path, case, text, message):
    with pytest.raises(ConfigErrors) as error:
        load_config(write(tmp_path, text))
    assert any(str(e).startswith(message) or message in str(e) for e in error.value.errors), str(error.value)
    assert any(str(e).startswith(message.split(":")[0]) for e in error.value.errors), str(error.value)


def test_all_errors_are_reported_together(tmp_path):
    text = BASE + "    accept-options:\n      ssl.verify-client: maybe\n      ws.inactivity.timeout: soon\n"
    with pytest.raises(ConfigErrors) as error:
        load_config(write(tmp_path, text))
    assert len(error.value.errors) == 2
    assert str(error.value).startswith("2 configuration error(s):")


MISSING_FILES = """
service:
  - name: site
    accept: https://localhost:8443/
    type: directory
    properties:
      directory: web
      welcom-file: index.html
    accept-options:
      ws.maximum.mesage.size: 1k
security:
  keystore: {type: PKCS12, file: keystore.p12, password-file: keystore.pw}
  truststore: {type: PEM, file: truststore.pem}
"""


def test_check_config_reports_missing_stores_password_files_and_unknown_options_in_one_run(tmp_path, capsys):
    (tmp_path / "web").mkdir()
    assert main(["check-config", str(write(tmp_path, MISSING_FILES))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsgate: 5 configuration error(s):\n")
    for line in (
        "service[site]/properties/welcom-file: unknown element; did you mean 'welcome-file'?",
        "service[site]/accept-options/ws.maximum.mesage.size: unknown element; did you mean 'ws.maximum.message.size'?",
        f"security/keystore/password-file: cannot read '{tmp_path / 'keystore.pw'}': No such file or directory",
        f"security/keystore/file: cannot read '{tmp_path / 'keystore.p12'}': No such file or directory",
        f"security/truststore/file: cannot read '{tmp_path / 'truststore.pem'}': No such file or directory",
    ):
        assert f"\n{line}" in err, err


def test_check_config_reports_what_opening_the_files_finds_in_one_run(tmp_path, capsys):
    """Once the file reads cleanly: unreadable stores, a login module's file, a directory, a bind host, together."""
    (tmp_path / "keystore.p12").write_bytes(b"not a store")
    (tmp_path / "truststore.pem").write_text("not a store either")
    text = MISSING_FILES.replace("      welcom-file: index.html\n", "")
    text = text.replace("      ws.maximum.mesage.size: 1k\n", "")
    text = text.replace(", password-file: keystore.pw", "").replace("localhost:8443", "nohost.invalid:8443")
    text = text.replace("{type: PEM, file: truststore.pem}", "{type: JKS, file: truststore.pem}")
    text = text.replace("    type: directory\n", "    type: directory\n    realm-name: r\n")
    text += "  realm:\n    name: r\n    authentication:\n      http-challenge-scheme: Basic\n"
    text += "      login-modules:\n        login-module:\n          type: file\n          options: {file: users.xml}\n"
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsgate: 5 configuration error(s):\n"), err
    for start in (
        "security/keystore: cannot load PKCS12 store",
        "security/truststore: cannot load JKS store",
        "security/realm[r]/authentication/login-modules/login-module[1]/options/file: cannot read",
        "service[site]/properties/directory:",
        "service[site]/accept: https://nohost.invalid:8443/ binds nohost.invalid:8443, but",
    ):
        assert f"\n{start}" in err, err


def test_xml_errors_name_the_element(tmp_path):
    text = XML_ECHO.format(ns="http://xmlns.kaazing.org/2016/06/gateway").replace(
        "<type>echo</type>", "<type>echo</type><balance>ws://x:1/</balance>"
    )
    with pytest.raises(ConfigErrors, match=r"service\[echo\]/balance: not supported yet"):
        load_config(write(tmp_path, text, "g.xml"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '<?xml version="1.0"?><!DOCTYPE g [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            '<gateway-config xmlns="http://xmlns.kaazing.org/2016/06/gateway"><properties><property><name>x</name><value>&b;</value></property></properties></gateway-config>',
            "DOCTYPE declarations are not allowed",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE g [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            '<gateway-config xmlns="http://xmlns.kaazing.org/2016/06/gateway"><service><name>&x;</name></service></gateway-config>',
            "DOCTYPE declarations are not allowed",
        ),
        ('<gateway-config xmlns="http://example.com/other"/>', "namespace 'http://example.com/other' is not supported"),
        ('<gateway-config xmlns="http://xmlns.kaazing.org/2016/06/gateway"><service>', "not well-formed XML"),
        ("service: [", "not valid YAML"),
        ("- a\n- b\n", "a YAML config must be a mapping"),
    ],
)
def test_hostile_or_broken_files_are_refused(tmp_path, text, message):
    name = "g.xml" if text.startswith("<") else "g.yaml"
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text, name))


# -- example configs in docs/ ------------------------------------------------------------------


def make_stores(folder: Path, ca: trustme.CA, kaazing: bool = False) -> None:
    """The files the docs examples reference, made fresh: keystores, truststores, password files.

    ``kaazing``: also Kaazing's JCEKS ``keystore.db`` and JKS ``truststore.db``, made by keytool.
    """
    cert = ca.issue_cert("localhost", "gateway.example.com")
    write_pkcs12(folder / "keystore.p12", cert, "changeme", alias="gateway")
    (folder / "keystore.pw").write_text("changeme\n")
    ca.cert_pem.write_to_path(str(folder / "truststore.pem"))
    (folder / "web").mkdir(exist_ok=True)
    (folder / "web" / "index.html").write_text("hi")
    if shutil.which("ktutil"):  # the Kerberos examples' keytab, made offline (no KDC needed)
        principal = "HTTP/localhost@EXAMPLE.COM"
        script = (
            f"addent -password -p {principal} -k 1 -e aes256-cts-hmac-sha1-96\nchangeme\nwkt {folder / 'http.keytab'}\n"
        )
        subprocess.run(["ktutil"], input=script, text=True, check=True, capture_output=True)
    if kaazing:
        keytool_store(folder, "JCEKS", {"gateway": cert}, "changeme").rename(folder / "keystore.db")
        keytool = ["keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", str(folder / "truststore.pem")]
        store = ["-keystore", str(folder / "truststore.db"), "-storetype", "JKS", "-storepass", "changeit"]
        subprocess.run(keytool + store, check=True, capture_output=True)


def kerberos_ready() -> bool:
    import importlib.util

    return importlib.util.find_spec("gssapi") is not None and shutil.which("ktutil") is not None


def example_files() -> list[Path]:
    """Gateway configs under docs/examples (not the user files they reference)."""
    return sorted(
        p
        for p in (DOCS / "examples").iterdir()
        if p.suffix in (".xml", ".yaml", ".yml") and p.name != "jaas-config.xml"
    )


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.name)
def test_every_docs_example_passes_check_config_as_shipped(tmp_path, example, capsys):
    """With the development stores, keytab and web/ folder committed beside them, nothing made by the test."""
    shutil.copytree(example.parent, tmp_path, dirs_exist_ok=True)
    if "kerberos5" in example.read_text() and importlib.util.find_spec("gssapi") is None:
        pytest.skip("python-gssapi not installed (make test installs it)")
    assert main(["check-config", str(tmp_path / example.name)]) == 0
    assert "OK" in capsys.readouterr().out


def test_docs_mention_every_example():
    reference = (DOCS / "configuration.md").read_text()
    for example in example_files():
        assert f"examples/{example.name}" in reference


@needs_keytool
def test_kaazing_example_builds_a_gateway_with_jceks_and_jks_stores(tmp_path, ca):
    shutil.copytree(DOCS / "examples", tmp_path, dirs_exist_ok=True)
    make_stores(tmp_path, ca, kaazing=True)
    gateway = Gateway(load_config(tmp_path / "gateway-config.xml"))
    assert gateway.runtime.trust is not None and gateway.runtime.trust.trusted_pem.startswith(b"-----BEGIN CERTIFICATE")
    assert gateway.config.service("trading").accept_options.tls.verify_client == "required"
    assert gateway.config.service("echo").protected


# -- command line ----------------------------------------------------------------------------


def test_check_config_reports_errors_with_exit_code_2(tmp_path, capsys):
    path = write(tmp_path, BASE + "    accept-options:\n      ssl.verify-client: maybe\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "service[echo]/accept-options/ssl.verify-client: 'maybe' is not one of none, optional, required" in err


def test_check_config_ok_and_property_flag(tmp_path, capsys):
    path = write(tmp_path, BASE.replace("localhost", "${host}"))
    assert main(["check-config", str(path), "--property", "host=gw.test", "--no-resolve"]) == 0
    assert "ws://gw.test:8000/echo" in capsys.readouterr().out


def test_check_config_missing_file(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "nope.xml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_default_config_is_printed_and_written_with_its_files(tmp_path, capsys):
    assert main(["default-config"]) == 0
    assert "name: secure-echo" in capsys.readouterr().out
    assert main(["default-config", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gateway.yaml", "index.html", "jaas-config.xml", "web"]
    capsys.readouterr()
    assert main(["check-config", str(tmp_path / "gateway.yaml")]) == 0
    assert "service[echo] (echo): ws://localhost:8000/echo" in capsys.readouterr().out
    assert main(["default-config", str(tmp_path)]) == 2  # never overwrites
    assert "already exist" in capsys.readouterr().err


def yaml_blocks() -> list[tuple[str, str]]:
    """Every YAML config shown inline in the README and docs/*.md."""
    import re

    blocks = []
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)):
            if "service:" in block:
                blocks.append((f"{page.name}#{i + 1}", block))
    return blocks


@pytest.mark.parametrize(("where", "text"), yaml_blocks(), ids=[w for w, _ in yaml_blocks()])
def test_every_inline_docs_config_passes_check_config(tmp_path, ca, capsys, where, text):
    if "kerberos5" in text and not kerberos_ready():
        pytest.skip("python-gssapi or ktutil not installed (make test installs them)")
    shutil.copytree(DOCS / "examples", tmp_path, dirs_exist_ok=True)
    make_stores(tmp_path, ca)
    ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    (tmp_path / "inline.yaml").write_text(text)
    # Their host names (gateway.example.com) resolve where they are deployed, not here.
    assert main(["check-config", str(tmp_path / "inline.yaml"), "--no-resolve"]) == 0, capsys.readouterr().err


def test_the_shipped_development_material_is_labelled_and_stays_valid():
    """docs/examples' stores must keep passing check-config for years; regenerate them (docs/examples/README.md)."""
    import datetime

    from cryptography import x509

    from wsgate.config.model import Store
    from wsgate.security.keystore import load_store

    folder = DOCS / "examples"
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    ca = x509.load_pem_x509_certificate((folder / "dev-ca.pem").read_bytes())
    assert ca.not_valid_after_utc > soon and "development only" in ca.subject.rfc4514_string()
    assert not (folder / "dev-ca.key").exists()  # nobody can mint certificates this CA vouches for
    keys = load_store(Store("PKCS12", folder / "keystore.p12", (folder / "keystore.pw").read_text().strip(), "k"))
    server = x509.load_pem_x509_certificate(keys.keys[0].chain_pem)
    assert server.not_valid_after_utc > soon and {"localhost", "127.0.0.1"} <= keys.keys[0].names
