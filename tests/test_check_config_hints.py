"""``check-config``'s "did you mean" for a misspelt option names every option the parser reads.

Only ``wsgate.cli.main`` is used here, so the file also runs against older trees (the hints once
missed ``connection.limit``, ``connection.limit.per.ip`` and ``handshake.rate.per.ip``: the parser
and the hint listed the option names separately).
"""

from __future__ import annotations

import pytest

from wsgate.cli import main

ECHO = """
service:
  - name: echo
    accept: ws://localhost:8000/echo
    type: echo
    {kind}:
      {name}: {value}
"""


@pytest.mark.parametrize(
    ("kind", "typo", "meant", "value"),
    [
        ("accept-options", "connection.limt", "connection.limit", "10"),
        ("accept-options", "connection.limit.per.iip", "connection.limit.per.ip", "10"),
        ("accept-options", "handshake.rate.perip", "handshake.rate.per.ip", "10/s"),
        ("accept-options", "ws.maximum.mesage.size", "ws.maximum.message.size", "64k"),
        ("connect-options", "ws.inactivty.timeout", "ws.inactivity.timeout", "30s"),
    ],
)
def test_check_config_suggests_the_option_meant(tmp_path, capsys, kind, typo, meant, value):
    path = tmp_path / "gateway.yaml"
    path.write_text(ECHO.format(kind=kind, name=typo, value=value))
    assert main(["check-config", str(path), "--no-resolve"]) == 2
    err = capsys.readouterr().err
    assert f"service[echo]/{kind}/{typo}: unknown element; did you mean '{meant}'?" in err


@pytest.mark.parametrize(
    ("name", "value"),
    [("connection.limit", "10"), ("connection.limit.per.ip", "2"), ("handshake.rate.per.ip", "10/s burst 20")],
)
def test_every_option_a_hint_names_is_read(tmp_path, capsys, name, value):
    path = tmp_path / "gateway.yaml"
    path.write_text(ECHO.format(kind="accept-options", name=name, value=value))
    assert main(["check-config", str(path), "--no-resolve"]) == 0, capsys.readouterr().err
