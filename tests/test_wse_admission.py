"""A WSE create in the admission, in memory: admitted as an upgrade would be (limits held, realm, Origin),
without RFC 6455's head checks and without the 426 a plain request gets (``Handshake.emulated``)."""

from __future__ import annotations

from dataclasses import replace

from wsgate.core.handshake import EMULATED, Accept, Reject

from .test_admission import admission, gateway, plain  # noqa: F401  (gateway: the fixture)


def create(path: str, *extra: tuple[str, str], remote: str = "192.0.2.1"):
    handshake = plain("POST", path, ("X-WebSocket-Version", "wseb-1.0"), ("X-Sequence-No", "0"), *extra, remote=remote)
    return replace(handshake, transport=EMULATED)


async def test_a_create_is_not_refused_as_a_non_upgrade(gateway):  # noqa: F811
    gate = admission(gateway, "open")
    assert isinstance(await gate.admit(replace(create("/open"), transport="websocket")), Reject)  # 426 natively
    decision = await gate.admit(create("/open"))
    assert isinstance(decision, Accept)
    assert decision.hold.held  # the connection counts until the emulated session ends
    refused = await gate.admit(create("/open"))
    assert isinstance(refused, Reject) and refused.status == 429  # connection.limit.per.ip 1
    decision.hold.release()
    again = await gate.admit(create("/open"))
    assert isinstance(again, Accept)
    again.hold.release()


async def test_a_create_meets_the_realm_and_the_origin_rules(gateway):  # noqa: F811
    staff = admission(gateway, "staff")
    refused = await staff.admit(create("/staff"))
    assert isinstance(refused, Reject) and refused.status == 401 and "WWW-Authenticate" in refused.headers
    cross = await admission(gateway, "open").admit(create("/open", ("Origin", "https://evil.example")))
    assert isinstance(cross, Reject) and cross.status == 403
    allowed = await admission(gateway, "open").admit(create("/open", ("Origin", "https://app.example")))
    assert isinstance(allowed, Accept)
    allowed.hold.release()
    duplicated = await admission(gateway, "open").admit(create("/open", ("Origin", "a"), ("Origin", "b")))
    assert isinstance(duplicated, Reject) and duplicated.status == 400
