"""Kaazing configs as operators have them: every part wsgate cannot honour is named once, at its element,
with what to write instead; nothing Kaazing accepts gets a misleading "unknown element" or "did you mean".
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsgate.catalog import load_config
from wsgate.cli import main
from wsgate.errors import ConfigErrors

from .test_config import DOCS, make_stores
from .test_tls import needs_keytool

DATA = Path(__file__).parent / "data"
NS = "http://xmlns.kaazing.org/2016/06/gateway"


def xml(tmp_path: Path, body: str, name: str = "gateway-config.xml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'<?xml version="1.0" encoding="UTF-8" ?>\n<gateway-config xmlns="{NS}">\n{body}\n</gateway-config>\n'
    )
    return path


def errors_of(path: Path, overrides: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as error:
        load_config(path, overrides)
    return [str(e) for e in error.value.errors]


ECHO = """
  <service>
    <name>echo</name>
    <accept>ws://localhost:8000/echo</accept>
    <type>echo</type>
    {extra}
  </service>
"""

PROXY = """
  <service>
    <name>p</name>
    <accept>ws://localhost:8000/p</accept>
    {connect}
    <type>proxy</type>
    {extra}
  </service>
"""


# -- 1. an unsupported service type is reported once ------------------------------------------


def test_an_unsupported_type_with_its_properties_is_one_error_at_its_type(tmp_path):
    path = xml(
        tmp_path,
        """
  <service>
    <name>JMS Service</name>
    <accept>ws://localhost:8000/jms</accept>
    <connect>tcp://localhost:61613</connect>
    <type>jms.proxy</type>
    <properties>
      <service.domain>localhost</service.domain>
      <encryption.key.alias>session</encryption.key.alias>
      <virtual.host>/</virtual.host>
    </properties>
  </service>""",
    )
    errors = errors_of(path)
    assert len(errors) == 1, errors
    assert errors[0].startswith("service[JMS Service]/type: service type 'jms.proxy' is not supported yet")
    assert "unknown element" not in errors[0]


# -- 2. Kaazing's built-in properties ---------------------------------------------------------


def test_hostname_is_the_machines_host_name(tmp_path):
    path = xml(tmp_path, ECHO.format(extra="").replace("ws://localhost:8000/echo", "ws://${hostname}:8000/echo"))
    config = load_config(path)
    assert config.service("echo").accepts[0].host == socket.gethostname().lower()


def test_explicit_hostname_property_and_override_win(tmp_path):
    body = """
  <properties><property><name>hostname</name><value>gw.example.com</value></property></properties>
""" + ECHO.format(extra="").replace("ws://localhost:8000/echo", "ws://${hostname}:8000/echo")
    path = xml(tmp_path, body)
    assert load_config(path).service("echo").accepts[0].host == "gw.example.com"
    assert load_config(path, {"hostname": "other.example.com"}).service("echo").accepts[0].host == "other.example.com"


@pytest.mark.parametrize("name", ["cloud.host", "cloud.instanceId"])
def test_cloud_properties_say_what_to_pass_instead(tmp_path, name):
    path = xml(tmp_path, ECHO.format(extra="").replace("localhost", "${" + name + "}"))
    (error,) = errors_of(path)
    assert error.startswith(f"service[echo]/accept: property ${{{name}}} is Kaazing's AWS instance-metadata look-up")
    assert f"--property {name}=VALUE" in error


# -- 3. the older <properties><connect> form --------------------------------------------------


def test_connect_given_as_a_property_is_a_connect_uri(tmp_path):
    path = xml(
        tmp_path, PROXY.format(connect="", extra="<properties><connect>tcp://backend:5000</connect></properties>")
    )
    service = load_config(path).service("p")
    assert [str(u) for u in service.connects] == ["tcp://backend:5000"]
    assert "connect" not in service.properties


def test_a_bad_connect_property_is_located_and_never_suggests_connect_strategy(tmp_path):
    path = xml(tmp_path, PROXY.format(connect="", extra="<properties><connect>udp://backend</connect></properties>"))
    errors = errors_of(path)
    assert errors[0].startswith("service[p]/properties/connect: 'udp://backend'"), errors
    assert len(errors) == 1, errors  # no follow-on "takes exactly one connect URI, found 0"
    assert not any("connect.strategy" in e for e in errors), errors


# -- 4. Kaazing syntax wsgate does not take yet: located, never misleading ---------------------


def test_nested_login_module_options_are_not_supported_yet(tmp_path):
    path = xml(
        tmp_path,
        ECHO.format(extra="<realm-name>demo</realm-name>")
        + """
  <security>
    <realm>
      <name>demo</name>
      <authentication>
        <http-challenge-scheme>Basic</http-challenge-scheme>
        <login-modules>
          <login-module>
            <type>class:example.Custom</type>
            <options>
              <nested1><value1>foo</value1></nested1>
            </options>
          </login-module>
        </login-modules>
      </authentication>
    </realm>
  </security>""",
    )
    (error,) = errors_of(path)
    assert error.startswith(
        "security/realm[demo]/authentication/login-modules/login-module[1]/options/nested1: "
        "nested option elements are not supported yet"
    )


@pytest.mark.parametrize(
    ("where", "extra", "path"),
    [
        ("accept", "", "service[echo]/accept"),
        (
            "bind",
            "<accept-options><ws.bind>[@eth0:1]:7082</ws.bind></accept-options>",
            "service[echo]/accept-options/ws.bind",
        ),
    ],
)
def test_network_interface_syntax_is_not_supported_yet(tmp_path, where, extra, path):
    text = ECHO.format(extra=extra)
    if where == "accept":
        text = text.replace("ws://localhost:8000/echo", "ws://[@eth0:1]:8000/echo")
    (error,) = errors_of(xml(tmp_path, text))
    assert error.startswith(f"{path}: "), error
    assert "network interface names ([@eth0:1]) are not supported yet" in error
    assert "IP address" in error


def test_tls_accept_uri_is_not_supported_yet(tmp_path):
    (error,) = errors_of(
        xml(tmp_path, ECHO.format(extra="").replace("ws://localhost:8000/echo", "tls://localhost:8001"))
    )
    assert error == (
        "service[echo]/accept: 'tls://localhost:8001': accepting tls:// (TLS without HTTP or WebSocket) "
        "is not supported yet; type echo takes ws://, wss://"
    )


def test_udp_connect_is_not_supported_yet_and_counts_as_given(tmp_path):
    (error,) = errors_of(xml(tmp_path, PROXY.format(connect="<connect>udp://localhost:7083</connect>", extra="")))
    assert error.startswith(
        "service[p]/connect: 'udp://localhost:7083': connecting to udp:// (UDP) is not supported yet"
    )


def test_connect_options_tls_encryption(tmp_path):
    connect = "<connect>tls://backend:5000</connect>"
    enabled = PROXY.format(
        connect=connect, extra="<connect-options><tls.encryption>enabled</tls.encryption></connect-options>"
    )
    assert load_config(xml(tmp_path, enabled)).service("p").connects[0].scheme == "tls"
    disabled = enabled.replace(">enabled<", ">disabled<")
    (error,) = errors_of(xml(tmp_path, disabled))
    assert error.startswith("service[p]/connect-options/tls.encryption: 'disabled' is not supported yet"), error
    assert "did you mean" not in error


# -- 5. ssl.ciphers -----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["accept-options", "connect-options"])
def test_unknown_cipher_names_are_located_errors(tmp_path, side):
    connect = "<connect>ssl://backend:5000</connect>"
    path = xml(tmp_path, PROXY.format(connect=connect, extra=f"<{side}><ssl.ciphers>FOO, BAR</ssl.ciphers></{side}>"))
    (error,) = errors_of(path)
    assert error.startswith(f"service[p]/{side}/ssl.ciphers: unknown cipher(s) FOO, BAR;"), error


@pytest.mark.parametrize(
    ("ciphers", "openssl"),
    [
        # Kaazing's documented examples and default
        ("HIGH,MEDIUM,!ADH,!KRB5", "HIGH,MEDIUM,!ADH,!KRB5"),
        ("DEFAULT", "DEFAULT"),
        ("LOW", "LOW"),
        ("NULL", "NULL"),
        ("ALL", "ALL"),
        ("HIGH,MEDIUM,LOW,EXPORT,NULL", "HIGH,MEDIUM,LOW,EXPORT,NULL"),
        ("!SSLv3", "!SSLv3"),
        ("HIGH,MEDIUM,ADH", "HIGH,MEDIUM,ADH"),
        # OpenSSL syntax
        ("ECDHE+AESGCM:!aNULL:@STRENGTH", "ECDHE+AESGCM:!aNULL:@STRENGTH"),
        # Java (IANA) suite names become OpenSSL's
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_RSA_WITH_AES_256_CBC_SHA",
            "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:AES256-SHA",
        ),
        ("TLS_DHE_RSA_WITH_AES_128_CBC_SHA256,TLS_EMPTY_RENEGOTIATION_INFO_SCSV", "DHE-RSA-AES128-SHA256"),
        ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES256-GCM-SHA384"),
    ],
)
def test_kaazing_cipher_lists_load(tmp_path, ciphers, openssl):
    path = xml(tmp_path, ECHO.format(extra=f"<accept-options><ssl.ciphers>{ciphers}</ssl.ciphers></accept-options>"))
    assert load_config(path).service("echo").accept_options.tls.ciphers == openssl


def test_a_java_name_this_openssl_lacks_is_named(tmp_path):
    extra = "<accept-options><ssl.ciphers>HIGH,SSL_RSA_WITH_RC4_128_MD5</ssl.ciphers></accept-options>"
    (error,) = errors_of(xml(tmp_path, ECHO.format(extra=extra)))
    assert error.startswith("service[echo]/accept-options/ssl.ciphers: unknown cipher(s) SSL_RSA_WITH_RC4_128_MD5;")


# -- 6. ssl.protocols entries wsgate drops are warned about -----------------------------------


def test_dropped_tls_protocols_are_a_located_warning(tmp_path, capsys, caplog):
    extra = "<accept-options><tls.protocols>SSLv3,TLSv1,TLSv1.2</tls.protocols></accept-options>"
    path = xml(tmp_path, ECHO.format(extra=extra))
    config = load_config(path)
    assert config.service("echo").accept_options.tls.protocols == ("TLSv1.2",)
    assert main(["check-config", str(path), "--no-resolve"]) == 0
    out = capsys.readouterr()
    expected = "service[echo]/accept-options/tls.protocols: SSLv3, TLSv1 dropped"
    assert f"WARNING: {expected}" in out.out
    assert any(r.levelname == "WARNING" and r.getMessage().startswith(expected) for r in caplog.records)  # and the log


def test_no_warning_without_dropped_protocols(tmp_path, capsys):
    path = xml(tmp_path, ECHO.format(extra="<accept-options><ssl.protocols>TLSv1.2</ssl.protocols></accept-options>"))
    assert main(["check-config", str(path), "--no-resolve"]) == 0
    assert "WARNING" not in capsys.readouterr().out


# -- 7. Kaazing native clients' Origin: privileged://host:port ---------------------------------


def test_privileged_origin_is_treated_like_no_origin():
    from wsgate.config.model import CrossSiteConstraint
    from wsgate.security.origin import cors_headers, origin_allowed, preflight

    listed = (CrossSiteConstraint("http://app.example:8080"),)
    anyone = (CrossSiteConstraint("*"),)
    own = "http://gw.example:8000"
    for origin in ("privileged://gw.example:8000", "PRIVILEGED://elsewhere:1"):
        assert origin_allowed(origin, own, listed)
        assert origin_allowed(origin, own, ())
        assert cors_headers(origin, own, anyone) == {}
        assert preflight(origin, "GET", None, own, anyone) == preflight(None, "GET", None, own, anyone)
    # only that scheme: pages' origins are still checked
    assert not origin_allowed("privileged.example.com", own, listed)
    assert not origin_allowed("http://privileged:80", own, listed)


async def test_kaazing_java_client_origin_passes_the_cross_site_check(start_gateway, http):
    import aiohttp

    gw = await start_gateway("""
        service:
          - name: echo
            accept: ws://127.0.0.1:0/echo
            type: echo
            cross-site-constraint:
              allow-origin: http://app.example:8080
    """)
    port = gw.port_of("echo")
    url = f"ws://127.0.0.1:{port}/echo"
    async with http.ws_connect(url, headers={"Origin": f"privileged://127.0.0.1:{port}"}) as ws:
        await ws.send_str("ok")
        assert (await ws.receive()).data == "ok"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403


# -- 9. Kaazing's truststore.db loads without library warnings --------------------------------


def zero_serial_ca_der(tmp_path: Path) -> bytes:
    """A CA certificate with serial number 0, as some old public CAs in Kaazing's truststore.db have."""
    key, cert = tmp_path / "zero.key", tmp_path / "zero.der"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-outform", "DER"]
        + ["-out", str(cert), "-subj", "/CN=old CA", "-days", "2", "-set_serial", "0"],
        check=True,
        capture_output=True,
    )
    return cert.read_bytes()


@needs_keytool
def test_kaazing_truststore_gives_no_library_warning_lines(tmp_path, ca):
    import jks

    shutil.copytree(DOCS / "examples", tmp_path, dirs_exist_ok=True)
    make_stores(tmp_path, ca, kaazing=True)
    store = jks.KeyStore.load(str(tmp_path / "truststore.db"), "changeit")
    entries = [*store.certs.values(), jks.TrustedCertEntry.new("old ca", zero_serial_ca_der(tmp_path))]
    jks.KeyStore.new("jks", entries).save(str(tmp_path / "truststore.db"), "changeit")
    result = subprocess.run(
        [sys.executable, "-m", "wsgate", "check-config", str(tmp_path / "gateway-config.xml"), "--no-resolve"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(__file__).parent.parent / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "CryptographyDeprecationWarning" not in result.stderr
    assert "site-packages" not in result.stderr and ".py:" not in result.stderr, result.stderr


# -- 11. a config laid out like Kaazing's distribution default -------------------------------


def test_kaazing_distribution_layout_checks_with_amqp_proxy(tmp_path, capsys):
    conf = tmp_path / "conf"  # GATEWAY_HOME/conf; its web root is GATEWAY_HOME/web
    conf.mkdir()
    shutil.copy(DATA / "kaazing-default-layout.xml", conf / "gateway-config.xml")
    for name in ("keystore.db", "keystore.pw", "truststore.db", "jaas-config.xml"):  # docs/examples' dev stores
        shutil.copy(DOCS / "examples" / name, conf / name)
    (tmp_path / "web" / "welcome").mkdir(parents=True)
    (tmp_path / "web" / "error-pages").mkdir()
    assert main(["check-config", str(conf / "gateway-config.xml"), "--no-resolve"]) == 0
    out = capsys.readouterr().out
    assert "service[AMQP Service] (amqp.proxy): ws://localhost:8000/amqp" in out
    assert "WARNING: service[AMQP Service]/properties/encryption.key.alias: ignored: " in out


def test_kaazing_distribution_layout_loads_without_amqp(tmp_path, ca):
    text = (DATA / "kaazing-default-layout.xml").read_text()
    start = text.index("  <service>\n    <name>AMQP Service</name>")
    end = text.index("</service>", start) + len("</service>")
    (tmp_path / "gateway-config.xml").write_text(text[:start] + text[end:])
    for name in ("keystore.db", "keystore.pw", "truststore.db"):  # the development stores docs/examples ships
        shutil.copy(DOCS / "examples" / name, tmp_path / name)
    (tmp_path / "web" / "welcome").mkdir(parents=True)
    (tmp_path / "web" / "error-pages").mkdir()
    (tmp_path / "jaas-config.xml").write_text(textwrap.dedent((DOCS / "examples" / "jaas-config.xml").read_text()))
    config = load_config(tmp_path / "gateway-config.xml")
    assert [s.name for s in config.services] == ["welcome-directory", "echo"]
    assert config.security.realms["demo"].authentication.http_challenge_scheme == "Application Basic"
