"""Kaazing configs as operators have them: every part wsgate cannot honour is named once, at its element,
with what to write instead; nothing Kaazing accepts gets a misleading "unknown element" or "did you mean".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsgate.catalog import load_config
from wsgate.cli import main
from wsgate.errors import ConfigErrors

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


def test_amqp_proxy_with_its_properties_is_one_error_at_its_type(tmp_path):
    path = xml(
        tmp_path,
        """
  <service>
    <name>AMQP Service</name>
    <accept>ws://localhost:8000/amqp</accept>
    <connect>tcp://localhost:5672</connect>
    <type>amqp.proxy</type>
    <properties>
      <service.domain>localhost</service.domain>
      <encryption.key.alias>session</encryption.key.alias>
      <virtual.host>/</virtual.host>
    </properties>
  </service>""",
    )
    errors = errors_of(path)
    assert len(errors) == 1, errors
    assert errors[0].startswith("service[AMQP Service]/type: service type 'amqp.proxy' is not supported yet")
    assert "unknown element" not in errors[0]


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
