"""MS-KKDCP, the Kerberos KDC Proxy Protocol, without I/O: what a request must be, and the reply's bytes.

A client POSTs (``Content-Type: application/kerberos``) the DER encoding of

    KDC-PROXY-MESSAGE ::= SEQUENCE {
        kerb-message    [0] EXPLICIT OCTET STRING,
        target-domain   [1] EXPLICIT KERB-REALM OPTIONAL,     -- GeneralString
        dclocator-hint  [2] EXPLICIT INTEGER OPTIONAL }

where ``kerb-message`` is a KDC message as sent over TCP (RFC 4120 §7.2.2): a 4-byte big-endian length, then
the message. The proxy sends it to a KDC of ``target-domain`` and answers the same structure around the
KDC's TCP reply (length prefix included), with neither optional field.

``parse_request`` takes only what this gateway forwards: a message that decodes in full (no byte left
over), whose length prefix is its length, which is an AS-REQ (``[APPLICATION 10]``) or a TGS-REQ
(``[APPLICATION 12]``) of Kerberos 5, and whose ``target-domain`` and request-body realm are both the
service's realm. Password changes (kpasswd framing) and anything else are refused. Every DER byte is read
and written by pyasn1, and the request decodes in full against the ASN.1 of RFC 4120 (the KDC checks
what the fields mean).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, tag, univ, useful

CONTENT_TYPE = "application/kerberos"
PREFIX = 4  # RFC 4120 §7.2.2: the TCP length prefix
AS_REQ, TGS_REQ = 10, 12
KERBEROS_5 = 5


def _explicit(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number)


def _field(name: str, number: int, kind: univ.Asn1Item, optional: bool = False) -> namedtype.NamedType:
    tagged = kind.subtype(explicitTag=_explicit(number))
    return namedtype.OptionalNamedType(name, tagged) if optional else namedtype.NamedType(name, tagged)


def _sequence(name: str, *fields: namedtype.NamedType, application: int | None = None) -> type[univ.Sequence]:
    """A SEQUENCE of explicitly tagged fields (RFC 4120 tags every field), itself tagged ``[APPLICATION n]``."""
    tag_set = univ.Sequence.tagSet
    if application is not None:
        tag_set = tag_set.tagExplicitly(tag.Tag(tag.tagClassApplication, tag.tagFormatConstructed, application))
    return type(name, (univ.Sequence,), {"tagSet": tag_set, "componentType": namedtype.NamedTypes(*fields)})


def _sequence_of(kind: univ.Asn1Item) -> univ.SequenceOf:
    return univ.SequenceOf(componentType=kind)


# MS-KKDCP §2.2.2.
KdcProxyMessage = _sequence(
    "KdcProxyMessage",
    _field("kerb-message", 0, univ.OctetString()),
    _field("target-domain", 1, char.GeneralString(), optional=True),
    _field("dclocator-hint", 2, univ.Integer(), optional=True),
)
# RFC 4120 §5.2 and §5.3, as far as a KDC request uses them.
PrincipalName = _sequence(
    "PrincipalName",
    _field("name-type", 0, univ.Integer()),
    _field("name-string", 1, _sequence_of(char.GeneralString())),
)
EncryptedData = _sequence(
    "EncryptedData",
    _field("etype", 0, univ.Integer()),
    _field("kvno", 1, univ.Integer(), optional=True),
    _field("cipher", 2, univ.OctetString()),
)
Ticket = _sequence(
    "Ticket",
    _field("tkt-vno", 0, univ.Integer()),
    _field("realm", 1, char.GeneralString()),
    _field("sname", 2, PrincipalName()),
    _field("enc-part", 3, EncryptedData()),
    application=1,
)
PaData = _sequence("PaData", _field("padata-type", 1, univ.Integer()), _field("padata-value", 2, univ.OctetString()))
HostAddress = _sequence("HostAddress", _field("addr-type", 0, univ.Integer()), _field("address", 1, univ.OctetString()))
# RFC 4120 §5.4.1: the realm is checked; the KDC reads the rest.
KdcReqBody = _sequence(
    "KdcReqBody",
    _field("kdc-options", 0, univ.BitString()),
    _field("cname", 1, PrincipalName(), optional=True),
    _field("realm", 2, char.GeneralString()),
    _field("sname", 3, PrincipalName(), optional=True),
    _field("from", 4, useful.GeneralizedTime(), optional=True),
    _field("till", 5, useful.GeneralizedTime()),
    _field("rtime", 6, useful.GeneralizedTime(), optional=True),
    _field("nonce", 7, univ.Integer()),
    _field("etype", 8, _sequence_of(univ.Integer())),
    _field("addresses", 9, _sequence_of(HostAddress()), optional=True),
    _field("enc-authorization-data", 10, EncryptedData(), optional=True),
    _field("additional-tickets", 11, _sequence_of(Ticket()), optional=True),
)


def _kdc_req(name: str, application: int) -> type[univ.Sequence]:
    """``AS-REQ ::= [APPLICATION 10] KDC-REQ`` and ``TGS-REQ ::= [APPLICATION 12] KDC-REQ``."""
    return _sequence(
        name,
        _field("pvno", 1, univ.Integer()),
        _field("msg-type", 2, univ.Integer()),
        _field("padata", 3, _sequence_of(PaData()), optional=True),
        _field("req-body", 4, KdcReqBody()),
        application=application,
    )


AsReq, TgsReq = _kdc_req("AsReq", AS_REQ), _kdc_req("TgsReq", TGS_REQ)


# The message a KDC proxy forwards: one or the other, told apart by the APPLICATION tag.
KdcRequest = type(
    "KdcRequest",
    (univ.Choice,),
    {
        "componentType": namedtype.NamedTypes(
            namedtype.NamedType("as-req", AsReq()), namedtype.NamedType("tgs-req", TgsReq())
        )
    },
)


class Refused(ValueError):
    """A request the proxy does not forward; ``str()`` is the short text the client gets with the 400."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.reason = reason  # a bounded label (metrics)


@dataclass(frozen=True, slots=True)
class KdcRequestInfo:
    """A request that may go to the KDC: ``message`` as the KDC reads it over TCP (length prefix included)."""

    message: bytes
    kind: str  # "AS-REQ" or "TGS-REQ"
    realm: str


def parse_request(body: bytes, realm: str) -> KdcRequestInfo:
    """The KDC message of a ``KDC-PROXY-MESSAGE`` for ``realm``; ``Refused`` for anything else."""
    try:
        proxied, rest = decoder.decode(body, asn1Spec=KdcProxyMessage())
    except PyAsn1Error:
        raise Refused("not a KDC-PROXY-MESSAGE", "malformed") from None
    if rest:
        raise Refused("bytes after the KDC-PROXY-MESSAGE", "malformed")
    domain = proxied["target-domain"]
    if not domain.isValue:
        raise Refused("no target-domain", "realm")
    if _text(domain) != realm:
        raise Refused("target-domain is not a realm of this proxy", "realm")
    message = bytes(proxied["kerb-message"])
    if len(message) < PREFIX or int.from_bytes(message[:PREFIX], "big") != len(message) - PREFIX:
        raise Refused("kerb-message length prefix does not match", "malformed")
    try:
        request, rest = decoder.decode(message[PREFIX:], asn1Spec=KdcRequest())
    except PyAsn1Error:
        raise Refused("only AS-REQ and TGS-REQ are proxied", "type") from None
    if rest:
        raise Refused("bytes after the KDC request", "malformed")
    name = request.getName()
    kdc_req = request[name]
    expected = AS_REQ if name == "as-req" else TGS_REQ
    if int(kdc_req["pvno"]) != KERBEROS_5 or int(kdc_req["msg-type"]) != expected:
        raise Refused("not a Kerberos 5 AS-REQ or TGS-REQ", "type")
    if _text(kdc_req["req-body"]["realm"]) != realm:
        raise Refused("the request's realm is not a realm of this proxy", "realm")
    return KdcRequestInfo(message, "AS-REQ" if expected == AS_REQ else "TGS-REQ", realm)


def encode_reply(kdc_reply: bytes) -> bytes:
    """The answer's body: a ``KDC-PROXY-MESSAGE`` around the KDC's TCP reply (its length prefix included)."""
    reply = KdcProxyMessage()
    reply["kerb-message"] = kdc_reply
    return bytes(encoder.encode(reply))


def encode_request(kdc_message: bytes, realm: str | None, hint: int | None = None) -> bytes:
    """A client's ``KDC-PROXY-MESSAGE`` (tests; a prober): ``kdc_message`` with its length prefix."""
    request = KdcProxyMessage()
    request["kerb-message"] = kdc_message
    if realm is not None:
        request["target-domain"] = realm
    if hint is not None:
        request["dclocator-hint"] = hint
    return bytes(encoder.encode(request))


def parse_reply(body: bytes) -> bytes:
    """The KDC's TCP reply inside an answer's ``KDC-PROXY-MESSAGE`` (tests; a prober)."""
    reply, rest = decoder.decode(body, asn1Spec=KdcProxyMessage())
    if rest:
        raise ValueError("bytes after the KDC-PROXY-MESSAGE")
    return bytes(reply["kerb-message"])


def framed(message: bytes) -> bytes:
    """``message`` with its RFC 4120 TCP length prefix."""
    return len(message).to_bytes(PREFIX, "big") + message


def _text(value: char.GeneralString) -> str:
    """A realm as text: Kerberos realms are ASCII (RFC 4120 §6.1); anything else never matches one."""
    return bytes(value.asOctets()).decode("ascii", "replace")
