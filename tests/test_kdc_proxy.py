"""``kdc.proxy``: MS-KKDCP through the gateway.

Stock MIT ``kinit`` and ``kvno`` get tickets from the throwaway KDC with a ``krb5.conf`` whose only KDC is
the gateway's HTTPS URL; requests the proxy does not forward (and GETs, oversized bodies) never open a
connection to a KDC; a KDC that is down or silent gives a quick 503, never a hang.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from pyasn1.codec.der import decoder, encoder

from wsgate.catalog import load_config
from wsgate.errors import ConfigErrors
from wsgate.gateway import Gateway
from wsgate.services import kkdcp
from wsgate.services.kdc_proxy import RESULTS

from .conftest import SECURITY_PEM, client_ssl
from .kdc import KINIT, KVNO, REALM, Kdc, free_port

DOCS = Path(__file__).parent.parent / "docs"
K5TLS = any(
    Path(folder, "krb5/plugins/tls/k5tls.so").exists()
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
)
needs_k5tls = pytest.mark.skipif(not K5TLS, reason="kinit's HTTPS plugin (krb5-k5tls) is not installed")
KERBEROS = "application/kerberos"


# -- KDC messages, built with pyasn1 from the proxy's own ASN.1 types -----------------------------------


def kdc_req(kind: str = "as", realm: str = REALM, msg_type: int | None = None, pvno: int = 5) -> bytes:
    """The DER of a minimal AS-REQ or TGS-REQ (no length prefix)."""
    request = (kkdcp.AsReq if kind == "as" else kkdcp.TgsReq)()
    request["pvno"] = pvno
    request["msg-type"] = msg_type if msg_type is not None else (10 if kind == "as" else 12)
    body = request["req-body"]
    body["kdc-options"] = (0, 1, 0, 0)
    body["realm"] = realm
    body["till"] = "20370913024805Z"
    body["nonce"] = 424242
    body["etype"].extend([18, 17])
    name = body["sname"]
    name["name-type"] = 2
    name["name-string"].extend(["krbtgt" if kind == "as" else "HTTP", realm if kind == "as" else "localhost"])
    return bytes(encoder.encode(request))


def proxied(message: bytes, realm: str | None = REALM) -> bytes:
    """A client's POST body: ``message`` with its TCP length prefix, wrapped for ``realm``."""
    return kkdcp.encode_request(kkdcp.framed(message), realm)


AS_REQ = kdc_req("as")
TGS_REQ = kdc_req("tgs")
KRB_ERROR = bytes.fromhex("7e03020105")  # what the fake KDC answers: [APPLICATION 30] (a KRB-ERROR's tag)


# -- the codec, without I/O ----------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "kind"), [(AS_REQ, "AS-REQ"), (TGS_REQ, "TGS-REQ")])
def test_an_as_req_or_tgs_req_of_the_realm_goes_to_the_kdc_as_sent(message, kind):
    request = kkdcp.parse_request(proxied(message), REALM)
    assert request.kind == kind and request.realm == REALM
    assert request.message == len(message).to_bytes(4, "big") + message  # the KDC reads the prefix too
    hinted = kkdcp.encode_request(kkdcp.framed(message), REALM, hint=1)  # dclocator-hint is allowed, unused
    assert kkdcp.parse_request(hinted, REALM).message == request.message


def _retagged(message: bytes, application: int) -> bytes:
    """``message`` under another [APPLICATION n] tag (the first DER byte), e.g. 14: an AP-REQ."""
    return bytes([0x60 | application]) + message[1:]


REFUSED = [
    ("empty body", b"", "malformed"),
    ("not DER", b"hello, KDC", "malformed"),
    ("truncated DER", proxied(AS_REQ)[:-1], "malformed"),
    ("bytes after the message", proxied(AS_REQ) + b"\0", "malformed"),
    ("prefix one too long", kkdcp.encode_request(kkdcp.framed(AS_REQ)[:-1], REALM), "malformed"),
    ("prefix one too short", kkdcp.encode_request(kkdcp.framed(AS_REQ) + b"\0", REALM), "malformed"),
    ("no prefix at all", kkdcp.encode_request(b"\0\0", REALM), "malformed"),
    ("bytes after the KDC request", kkdcp.encode_request(kkdcp.framed(AS_REQ + b"\0"), REALM), "malformed"),
    ("an AP-REQ", proxied(_retagged(AS_REQ, 14)), "type"),
    ("a KRB-ERROR", proxied(_retagged(AS_REQ, 30)), "type"),
    ("kpasswd framing", kkdcp.encode_request(kkdcp.framed(b"\x00\x20\xff\x80" + bytes(28)), REALM), "type"),
    ("AS tag with TGS msg-type", proxied(kdc_req("as", msg_type=12)), "type"),
    ("Kerberos 4", proxied(kdc_req("as", pvno=4)), "type"),
    ("another realm", proxied(AS_REQ, "OTHER.TEST"), "realm"),
    ("realm in lower case", proxied(AS_REQ, REALM.lower()), "realm"),
    ("no target-domain", proxied(AS_REQ, None), "realm"),
    ("request body names another realm", proxied(kdc_req("tgs", realm="OTHER.TEST")), "realm"),
]


@pytest.mark.parametrize(("body", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_what_the_proxy_does_not_forward(body, reason):
    with pytest.raises(kkdcp.Refused) as refused:
        kkdcp.parse_request(body, REALM)
    assert refused.value.reason == reason and reason in RESULTS
    assert 0 < len(str(refused.value)) < 80  # the short text the client gets


def refusal(body: bytes) -> kkdcp.Refused:
    with pytest.raises(kkdcp.Refused) as refused:
        kkdcp.parse_request(body, REALM)
    return refused.value


def test_the_answer_wraps_the_kdc_reply_with_its_prefix_and_nothing_else():
    reply = kkdcp.framed(KRB_ERROR)
    body = kkdcp.encode_reply(reply)
    message, rest = decoder.decode(body, asn1Spec=kkdcp.KdcProxyMessage())
    assert rest == b"" and bytes(message["kerb-message"]) == reply
    assert not message["target-domain"].isValue and not message["dclocator-hint"].isValue
    assert kkdcp.parse_reply(body) == reply


# -- the service on loopback, with a fake KDC that counts what reaches it --------------------------------


class FakeKdc:
    """A TCP KDC stand-in: ``answer`` replies ``reply`` to each length-prefixed request, ``silent`` reads and
    never answers; ``connections`` counts every connection, ``requests`` keeps what it read."""

    def __init__(self, mode: str = "answer", reply: bytes = kkdcp.framed(KRB_ERROR)) -> None:
        self.mode = mode
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> FakeKdc:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            prefix = await reader.readexactly(4)
            self.requests.append(prefix + await reader.readexactly(int.from_bytes(prefix, "big")))
            if self.mode == "answer":
                writer.write(self.reply)
                await writer.drain()
            else:
                await reader.read()  # until the gateway gives up
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def fake_kdc():
    started: list[FakeKdc] = []

    async def start(mode: str = "answer", reply: bytes = kkdcp.framed(KRB_ERROR)) -> FakeKdc:
        kdc = await FakeKdc(mode, reply).start()
        started.append(kdc)
        return kdc

    yield start
    for kdc in started:
        await kdc.stop()


def proxy_config(*kdcs: str, properties: str = "") -> str:
    connects = "".join(f"      - tcp://{kdc}\n" for kdc in kdcs)
    return f"""
service:
  - name: kdc
    accept: https://localhost:0/KdcProxy
    connect:
{connects}    type: kdc.proxy
    properties:
      realm: {REALM}
{properties}{SECURITY_PEM}"""


def dead_address() -> str:
    """A loopback port nothing listens on (connections are refused at once)."""
    return f"127.0.0.1:{free_port()}"


async def post(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    ca,
    body: bytes,
    content_type: str | None = KERBEROS,
    method: str = "POST",
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    url = f"https://localhost:{gateway.port_of('kdc')}/KdcProxy"
    headers = {"Content-Type": content_type} if content_type else {}
    data: object = body
    if chunked:

        async def chunks():
            for start in range(0, len(body), 16 * 1024):
                yield body[start : start + 16 * 1024]

        data = chunks()
    async with http.request(method, url, data=data, headers=headers, ssl=client_ssl(ca)) as response:
        return response.status, dict(response.headers), await response.read()


def results(gateway: Gateway) -> dict[str, float]:
    """``wsgate_kdc_proxy_requests_total`` of the service, by result."""
    text = gateway.runtime.metrics.exposition().decode() if gateway.runtime.metrics else ""
    pattern = r'wsgate_kdc_proxy_requests_total\{result="(\w+)",service="kdc"\} ([0-9.]+)'
    return {result: float(count) for result, count in re.findall(pattern, text)}


async def test_a_request_goes_to_the_kdc_and_its_reply_comes_back_wrapped(
    start_gateway, pem_stores, http, ca, fake_kdc
):
    kdc = await fake_kdc()
    gateway = await start_gateway(proxy_config(f"127.0.0.1:{kdc.port}"))
    status, headers, body = await post(http, gateway, ca, proxied(AS_REQ))
    assert status == 200 and headers["Content-Type"] == KERBEROS and headers["Cache-Control"] == "no-store"
    assert kkdcp.parse_reply(body) == kkdcp.framed(KRB_ERROR)
    assert kdc.requests == [kkdcp.framed(AS_REQ)]  # byte for byte, length prefix included
    status, _, body = await post(http, gateway, ca, proxied(TGS_REQ), content_type="Application/Kerberos; x=1")
    assert status == 200 and kdc.requests[-1] == kkdcp.framed(TGS_REQ)
    assert results(gateway) == {"ok": 2.0}
    scrape = gateway.runtime.metrics.exposition().decode()  # type: ignore[union-attr]
    assert 'wsgate_kdc_proxy_seconds_count{service="kdc"} 2.0' in scrape


async def test_nothing_the_proxy_refuses_reaches_a_kdc(start_gateway, pem_stores, http, ca, fake_kdc):
    kdc = await fake_kdc()
    gateway = await start_gateway(proxy_config(f"127.0.0.1:{kdc.port}", properties="      maximum.message.size: 4k\n"))
    status, headers, _ = await post(http, gateway, ca, b"", content_type=None, method="GET")
    assert status == 405 and headers["Allow"] == "POST"
    for method in ("PUT", "DELETE", "OPTIONS"):
        assert (await post(http, gateway, ca, proxied(AS_REQ), method=method))[0] == 405
    assert (await post(http, gateway, ca, proxied(AS_REQ), content_type=None))[0] == 415
    assert (await post(http, gateway, ca, proxied(AS_REQ), content_type="text/plain"))[0] == 415
    for name, body, _ in REFUSED:
        status, headers, text = await post(http, gateway, ca, body)
        assert status == 400 and headers["Content-Type"].startswith("text/plain"), name
        assert text.decode() == f"{refusal(body)}\n"
    big = proxied(AS_REQ + bytes(5000))
    assert (await post(http, gateway, ca, big))[0] == 413  # declared Content-Length: refused before reading
    assert (await post(http, gateway, ca, big, chunked=True))[0] == 413  # no length: refused once over 4k
    assert kdc.connections == 0
    counts = results(gateway)
    assert counts == {
        "method": 4.0,
        "media_type": 2.0,
        "too_large": 2.0,
        "malformed": 8.0,
        "type": 5.0,
        "realm": 4.0,
    }
    assert sum(counts.values()) == 4 + 2 + len(REFUSED) + 2


async def test_a_kdc_that_refuses_connections_is_skipped_for_the_next(start_gateway, pem_stores, http, ca, fake_kdc):
    kdc = await fake_kdc()
    gateway = await start_gateway(proxy_config(dead_address(), f"127.0.0.1:{kdc.port}"))
    status, _, body = await post(http, gateway, ca, proxied(AS_REQ))
    assert status == 200 and kkdcp.parse_reply(body) == kkdcp.framed(KRB_ERROR)
    assert kdc.connections == 1


async def test_no_kdc_listening_is_a_quick_503(start_gateway, pem_stores, http, ca):
    gateway = await start_gateway(proxy_config(dead_address(), dead_address()))
    started = time.monotonic()
    status, headers, _ = await post(http, gateway, ca, proxied(AS_REQ))
    assert status == 503 and headers["Retry-After"] == "5"
    assert time.monotonic() - started < 2.0
    assert results(gateway) == {"unavailable": 1.0}


async def test_a_kdc_that_never_answers_is_a_503_after_kdc_timeout(start_gateway, pem_stores, http, ca, fake_kdc):
    kdc = await fake_kdc("silent")
    gateway = await start_gateway(proxy_config(f"127.0.0.1:{kdc.port}", properties="      kdc.timeout: 300ms\n"))
    started = time.monotonic()
    status, headers, _ = await post(http, gateway, ca, proxied(AS_REQ))
    elapsed = time.monotonic() - started
    assert status == 503 and headers["Retry-After"] == "5"
    assert 0.3 <= elapsed < 2.0
    assert kdc.requests == [kkdcp.framed(AS_REQ)]  # it got the request, and only one KDC was asked


async def test_kdc_concurrency_bounds_the_exchanges_in_flight(start_gateway, pem_stores, http, ca, fake_kdc):
    kdc = await fake_kdc("silent")
    properties = "      kdc.timeout: 1s\n      kdc.concurrency: 1\n"
    gateway = await start_gateway(proxy_config(f"127.0.0.1:{kdc.port}", properties=properties))
    first = asyncio.ensure_future(post(http, gateway, ca, proxied(AS_REQ)))
    while not kdc.requests:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    status, headers, text = await post(http, gateway, ca, proxied(AS_REQ))
    assert status == 503 and headers["Retry-After"] == "5" and b"in progress" in text
    assert time.monotonic() - started < 0.5  # refused at once, not queued
    assert (await first)[0] == 503  # the silent KDC's own timeout
    assert kdc.connections == 1
    assert results(gateway) == {"busy": 1.0, "unavailable": 1.0}


async def test_a_kdc_reply_over_the_limit_is_a_502(start_gateway, pem_stores, http, ca, fake_kdc):
    kdc = await fake_kdc(reply=(2**31 + 5).to_bytes(4, "big") + b"\0" * 5)  # the RFC 4120 extension bit
    gateway = await start_gateway(proxy_config(f"127.0.0.1:{kdc.port}"))
    assert (await post(http, gateway, ca, proxied(AS_REQ)))[0] == 502
    assert results(gateway) == {"bad_reply": 1.0}


async def test_a_realm_guards_it_as_any_plain_http_service(start_gateway, pem_stores, http, ca, fake_kdc, tmp_path):
    (tmp_path / "jaas-config.xml").write_text(
        '<jaas-config xmlns="http://xmlns.kaazing.com/jaas-config/centurion">'
        "<user><name>joe</name><password>welcome</password><role-name>KERBEROS</role-name></user>"
        "<user><name>ann</name><password>s3cret</password><role-name>OTHER</role-name></user></jaas-config>"
    )
    kdc = await fake_kdc()
    text = (
        proxy_config(f"127.0.0.1:{kdc.port}").replace(
            "    type: kdc.proxy\n",
            "    type: kdc.proxy\n    realm-name: staff\n    authorization-constraint:\n      require-role: KERBEROS\n",
        )
        + """  realm:
    - name: staff
      authentication:
        http-challenge-scheme: Basic
        login-modules:
          login-module:
            type: file
            options:
              file: jaas-config.xml
"""
    )
    gateway = await start_gateway(text)
    url = f"https://localhost:{gateway.port_of('kdc')}/KdcProxy"

    async def post_as(user: str | None) -> int:
        headers = {"Content-Type": KERBEROS}
        if user:
            password = "welcome" if user == "joe" else "s3cret"
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        async with http.post(url, data=proxied(AS_REQ), headers=headers, ssl=client_ssl(ca)) as response:
            if response.status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
            return response.status

    assert await post_as(None) == 401
    assert await post_as("ann") == 403  # authenticated, without the role
    assert kdc.connections == 0
    assert await post_as("joe") == 200
    assert kdc.connections == 1


def test_it_is_a_resource_service_as_management_is():
    from wsgate.catalog import SERVICE_TYPES
    from wsgate.management.service import OperatorService
    from wsgate.services.base import ResourceService
    from wsgate.services.kdc_proxy import KdcProxyService

    kind = SERVICE_TYPES["kdc.proxy"]
    assert kind.factory is KdcProxyService and issubclass(KdcProxyService, ResourceService)
    assert issubclass(OperatorService, ResourceService)  # the gateway picks one endpoint for both
    assert kind.plain_http and not kind.cors and not kind.prefix and kind.connect_schemes == ("tcp",)


# -- real MIT kinit and kvno, whose only KDC is the gateway ----------------------------------------------


def kdc_requests_logged(kdc: Kdc) -> int:
    """AS-REQs and TGS-REQs the KDC has logged so far (each one it answered)."""
    log = kdc.folder / "kdc.log"
    return len(re.findall(r"\b(?:AS|TGS)_REQ\b", log.read_text())) if log.exists() else 0


async def wait_for_kdc_log(kdc: Kdc, count: int) -> int:
    for _ in range(100):  # the KDC writes its line after it answered
        if (logged := kdc_requests_logged(kdc)) >= count:
            return logged
        await asyncio.sleep(0.02)
    return kdc_requests_logged(kdc)


@needs_k5tls
async def test_kinit_and_kvno_get_tickets_only_through_the_gateway(start_gateway, pem_stores, kdc, tmp_path):
    gateway = await start_gateway(proxy_config(dead_address(), kdc.address))  # the first KDC is down
    url = f"https://localhost:{gateway.port_of('kdc')}/KdcProxy"
    config = kdc.proxied_config(tmp_path / "krb5.conf", url, pem_stores["truststore"])
    text = config.read_text()
    assert f"kdc = {url}\n" in text and str(kdc.port) not in text  # no way to the KDC but the gateway
    before = kdc_requests_logged(kdc)
    ccache = tmp_path / "alice.cc"
    await asyncio.to_thread(kdc.kinit, "alice", ccache, None, config)
    out = await asyncio.to_thread(kdc.run, KVNO, "-c", f"FILE:{ccache}", f"HTTP/localhost@{REALM}", env=kdc.env(config))
    assert f"HTTP/localhost@{REALM}: kvno = " in out
    listed = await asyncio.to_thread(kdc.run, "klist", "-c", f"FILE:{ccache}", env=kdc.env(config))
    assert f"krbtgt/{REALM}@{REALM}" in listed and f"HTTP/localhost@{REALM}" in listed
    forwarded = results(gateway)["ok"]
    assert forwarded >= 3  # AS-REQ, AS-REQ with pre-authentication, TGS-REQ
    assert await wait_for_kdc_log(kdc, before + int(forwarded)) == before + forwarded  # none came another way


@needs_k5tls
async def test_kinit_gives_up_quickly_when_no_kdc_answers(start_gateway, pem_stores, kdc, tmp_path, fake_kdc):
    silent = await fake_kdc("silent")
    properties = "      kdc.connect.timeout: 300ms\n      kdc.timeout: 300ms\n"
    gateway = await start_gateway(proxy_config(dead_address(), f"127.0.0.1:{silent.port}", properties=properties))
    url = f"https://localhost:{gateway.port_of('kdc')}/KdcProxy"
    config = kdc.proxied_config(tmp_path / "krb5.conf", url, pem_stores["truststore"])
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        [KINIT, "-c", f"FILE:{tmp_path / 'cc'}", "alice"],
        input="alicepw\n",
        capture_output=True,
        text=True,
        env={**os.environ, **kdc.env(config)},
        timeout=45,
    )
    assert done.returncode != 0 and "KDC" in done.stderr  # "Cannot contact any KDC for realm ..."
    assert time.monotonic() - started < 30
    counts = results(gateway)
    assert counts["unavailable"] >= 1 and "ok" not in counts


# -- configuration -----------------------------------------------------------------------------------------


CONFIG_ERRORS = [
    (("      realm: EXAMPLE.TEST\n", ""), "service[kdc]/properties/realm: is required for this service type"),
    (("realm: EXAMPLE.TEST", "realm: EXAMPLE TEST"), "service[kdc]/properties/realm: 'EXAMPLE TEST' is not a"),
    (("tcp://127.0.0.1:88", "ssl://127.0.0.1:88"), "service[kdc]/connect: 'ssl://127.0.0.1:88' has scheme 'ssl'; use one of tcp"),
    (("tcp://127.0.0.1:88", "tcp://kdc.example.test"), "service[kdc]/connect: 'tcp://kdc.example.test' needs a port"),
    (("    connect:\n      - tcp://127.0.0.1:88\n", ""), "service[kdc]/connect: a kdc.proxy service takes 1..8 connect URI"),
    (("https://localhost:0/KdcProxy", "wss://localhost:0/KdcProxy"), "service[kdc]/accept: 'wss://localhost:0/KdcProxy' has scheme 'wss'"),
    (("      realm:", "      kdc.timeout: 0s\n      realm:"), "service[kdc]/properties/kdc.timeout: '0s' is not a timeout"),
    (("      realm:", "      kdc.connect.timeout: soon\n      realm:"), "service[kdc]/properties/kdc.connect.timeout: 'soon' is not a duration"),
    (("      realm:", "      maximum.message.size: 10\n      realm:"), "service[kdc]/properties/maximum.message.size: '10' is too small"),
    (("      realm:", "      kdc.concurrency: 0\n      realm:"), "service[kdc]/properties/kdc.concurrency: '0' is not a positive whole number"),
    (("      realm:", "      kdc.timout: 1s\n      realm:"), "service[kdc]/properties/kdc.timout: unknown element; did you mean 'kdc.timeout'?"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), CONFIG_ERRORS, ids=[m for _, m in CONFIG_ERRORS])
def test_config_errors_name_the_element(tmp_path, pem_stores, change, message):
    text = proxy_config("127.0.0.1:88").replace(*change)
    assert text != proxy_config("127.0.0.1:88")
    (tmp_path / "gateway.yaml").write_text(text)
    with pytest.raises(ConfigErrors) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert any(str(error).startswith(message) for error in caught.value.errors), str(caught.value)


KAAZING_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<gateway-config xmlns="http://xmlns.kaazing.org/2016/06/gateway">
  <service>
    <name>kdc</name>
    <accept>https://localhost:8443/KdcProxy</accept>
    <connect>tcp://127.0.0.1:88</connect>
    <connect>tcp://127.0.0.2:88</connect>
    <type>TYPE</type>
    <properties>
      <realm>EXAMPLE.TEST</realm>
      <kdc.timeout>3s</kdc.timeout>
    </properties>
  </service>
  <security>
    <keystore>
      <type>PEM</type>
      <file>keystore.pem</file>
    </keystore>
  </security>
</gateway-config>
"""


def test_the_kaazing_xml_form_maps_to_the_same_service(tmp_path, pem_stores):
    (tmp_path / "gateway-config.xml").write_text(KAAZING_XML.replace("TYPE", "kdc.proxy"))
    service = load_config(tmp_path / "gateway-config.xml").service("kdc")
    assert service.type == "kdc.proxy" and [str(u) for u in service.connects] == [
        "tcp://127.0.0.1:88",
        "tcp://127.0.0.2:88",
    ]
    assert service.setting("realm") == REALM and service.setting("kdc.timeout") == 3.0
    assert not service.protected  # anonymous, as MS-KKDCP is: the KDC authenticates


@pytest.mark.parametrize("form", ["yaml", "xml"])
def test_kerberos5_proxy_is_refused_with_the_way_to_kdc_proxy(tmp_path, form, pem_stores):
    if form == "xml":
        path = tmp_path / "gateway-config.xml"
        path.write_text(KAAZING_XML.replace("TYPE", "kerberos5.proxy"))
    else:
        path = tmp_path / "gateway.yaml"
        path.write_text(  # Kaazing's own example, which connects over udp://
            "service:\n  - name: kdc\n    accept: wss://localhost:9002/kerberos5\n"
            "    connect: udp://kdc.example.test:88\n    type: kerberos5.proxy\n"
        )
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    message = str(caught.value.errors[0])
    assert message.startswith("service[kdc]/type: service type 'kerberos5.proxy' is not supported: ")
    assert "use type kdc.proxy" in message and "kdc = https://" in message
    assert len(caught.value.errors) == 1  # its connect URI and properties are not judged on top


def test_the_docs_example_loads(tmp_path):
    shutil.copy(DOCS / "examples" / "kdc-proxy.yaml", tmp_path)
    (tmp_path / "keystore.pw").write_text("changeme\n")
    (tmp_path / "keystore.p12").touch()  # the config is read, the store is not loaded
    service = load_config(tmp_path / "kdc-proxy.yaml").service("kdc")
    assert service.type == "kdc.proxy" and service.setting("realm") == "EXAMPLE.TEST"
    assert [u.port for u in service.connects] == [88, 88] and service.accepts[0].path == "/KdcProxy"
    assert (service.setting("kdc.connect.timeout"), service.setting("kdc.timeout")) == (2.0, 5.0)
    assert service.setting("maximum.message.size") == 64 * 1024
