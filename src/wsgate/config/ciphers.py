"""``ssl.ciphers``: Kaazing's cipher lists checked against the OpenSSL wsgate runs on, at load time.

Kaazing read an OpenSSL-style list (comma separated, ``!``/``-``/``+`` prefixes, ``A+B`` intersections,
``@STRENGTH``) whose names could also be Java's (IANA's) suite names, and passed names it did not know to the
JVM, which refused them only when a client connected. Here every entry must be something OpenSSL knows: a
keyword (``HIGH``, ``aNULL``, ``ECDHE``, …), an OpenSSL suite name, or a Java name, which is translated to
OpenSSL's. Anything else is a config error naming the entries. Whether the whole list selects any cipher is
checked where a TLS context is built (``security/tls.py``): Kaazing's documented ``LOW`` selects nothing in
OpenSSL 3, yet is a valid list on a side that never uses TLS.
"""

from __future__ import annotations

import re
import ssl
from functools import cache
from itertools import product

# OpenSSL cipher-string keywords that may select nothing in a given OpenSSL build (removed algorithms,
# optional engines): valid words, so they never count as unknown. Every other keyword is recognised by asking
# OpenSSL itself (``_selects``).
_QUIET_KEYWORDS = frozenset(
    (
        *("MEDIUM", "LOW", "EXPORT", "EXP", "EXPORT40", "EXPORT56", "SSLv2", "COMPLEMENTOFDEFAULT"),
        *("KRB5", "kKRB5", "aKRB5", "RC4", "RC2", "DES", "3DES", "IDEA", "SEED", "MD5"),
        *("GOST", "GOST94", "GOST89MAC", "aGOST", "aGOST01", "aGOST12", "kGOST", "kGOST18"),
        *("kDH", "kDHr", "kDHd", "aDH", "kECDH", "kECDHr", "kECDHe", "aECDH", "FZA", "kFZA", "aFZA", "eFZA"),
        *("DSS", "aDSS", "kSRP", "aSRP", "SRP", "PSK", "kPSK", "aPSK", "kECDHEPSK", "kDHEPSK", "kRSAPSK"),
        *("CHACHA20", "ARIA", "ARIA128", "ARIA256", "CAMELLIA", "CAMELLIA128", "CAMELLIA256", "AESCCM", "AESCCM8"),
    )
)
# TLS 1.3 suites: OpenSSL enables its own set whatever the cipher string says (Python cannot change it), so
# naming them is valid and changes nothing. Signalling values are not ciphers; OpenSSL sends them itself.
_TLS13_SUITES = frozenset(
    (
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    )
)
_SIGNALLING = frozenset(("TLS_EMPTY_RENEGOTIATION_INFO_SCSV", "TLS_FALLBACK_SCSV"))

_JAVA_NAME = re.compile(
    r"^(?:TLS|SSL)_(?P<kx>[A-Za-z0-9_]+?)_WITH_(?P<cipher>[A-Z0-9_]+?)(?:_(?P<mac>SHA|SHA256|SHA384|MD5))?$"
)
# Key exchange and authentication, Java → OpenSSL's name prefixes (the first one known wins).
_KEY_EXCHANGES: dict[str, tuple[str, ...]] = {
    "RSA": ("",),
    "DHE_RSA": ("DHE-RSA", "EDH-RSA"),
    "DHE_DSS": ("DHE-DSS", "EDH-DSS"),
    "ECDHE_RSA": ("ECDHE-RSA", "ECDHE"),
    "ECDHE_ECDSA": ("ECDHE-ECDSA",),
    "DH_anon": ("ADH",),
    "ECDH_anon": ("AECDH",),
    "PSK": ("PSK",),
    "DHE_PSK": ("DHE-PSK",),
    "RSA_PSK": ("RSA-PSK",),
    "ECDHE_PSK": ("ECDHE-PSK",),
    "SRP_SHA": ("SRP",),
    "SRP_SHA_RSA": ("SRP-RSA",),
    "SRP_SHA_DSS": ("SRP-DSS",),
}
_BULK = re.compile(r"^(?P<alg>AES|CAMELLIA|ARIA)_(?P<bits>128|256)_(?P<mode>CBC|GCM|CCM|CCM_8)$")
_OTHER_BULK: dict[str, tuple[str, ...]] = {
    "CHACHA20_POLY1305": ("CHACHA20-POLY1305",),
    "3DES_EDE_CBC": ("DES-CBC3",),
    "RC4_128": ("RC4",),
    "SEED_CBC": ("SEED",),
    "IDEA_CBC": ("IDEA",),
    "NULL": ("NULL",),
}


@cache
def _openssl_suites() -> frozenset[str]:
    """Every suite name this OpenSSL has, NULL ciphers and low security levels included."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return frozenset(c["name"] for c in context.get_ciphers())


@cache
def _selects(word: str) -> bool:
    """Whether OpenSSL takes ``word`` alone as a cipher string (it ignores words it does not know)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.set_ciphers(f"{word}:@SECLEVEL=0")
    except ssl.SSLError:
        return False
    return True


def _bulk_names(cipher: str) -> tuple[str, ...]:
    if cipher in _OTHER_BULK:
        return _OTHER_BULK[cipher]
    match = _BULK.match(cipher)
    if match is None:
        return ()
    alg, bits, mode = match["alg"], match["bits"], match["mode"]
    if mode == "CBC":
        return (f"{alg}{bits}", f"{alg}{bits}-CBC", f"{alg}-{bits}-CBC")
    return (f"{alg}{bits}-{mode.replace('_', '')}",)


def openssl_name(java: str) -> str | None:
    """``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`` → ``ECDHE-RSA-AES128-GCM-SHA256``; None when this OpenSSL
    has no such suite (or the name is not a suite name)."""
    match = _JAVA_NAME.match(java)
    if match is None or match["kx"] not in _KEY_EXCHANGES:
        return None
    mac = match["mac"] or ""
    if match["cipher"] == "CHACHA20_POLY1305":
        mac = ""  # OpenSSL names the AEAD only
    known = _openssl_suites()
    for kx, bulk in product(_KEY_EXCHANGES[match["kx"]], _bulk_names(match["cipher"])):
        name = "-".join(part for part in (kx, bulk, mac) if part)
        if name in known:
            return name
    return None


def _known_word(word: str) -> bool:
    return word in _QUIET_KEYWORDS or word in _openssl_suites() or _selects(word)


def parse_ciphers(text: str) -> str:
    """A Kaazing or OpenSSL cipher list → the OpenSSL cipher string wsgate uses (Java names translated).

    Raises ``ValueError`` naming every entry OpenSSL does not know.
    """
    entries = [e for e in re.split(r"[,:\s]+", text.strip()) if e]
    unknown: list[str] = []
    out: list[str] = []
    translated = False
    for entry in entries:
        if entry in _TLS13_SUITES or entry in _SIGNALLING:
            translated = True  # dropped: see above
            continue
        if entry == "@STRENGTH" or re.fullmatch(r"@SECLEVEL=[0-5]", entry):
            out.append(entry)
            continue
        prefix = entry[0] if entry[0] in "!-+" else ""
        words = entry[len(prefix) :].split("+")
        names = [openssl_name(w) if _JAVA_NAME.match(w) else w for w in words]
        if any(n is None or n == "" or not _known_word(n) for n in names):
            unknown.append(entry)
            continue
        translated = translated or names != words
        out.append(prefix + "+".join(n for n in names if n))
    if unknown:
        raise ValueError(
            f"unknown cipher(s) {', '.join(unknown)}; write OpenSSL cipher strings (HIGH, !aNULL, ECDHE+AESGCM), "
            "OpenSSL suite names (ECDHE-RSA-AES128-GCM-SHA256) or Java suite names this OpenSSL has "
            "(TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
        )
    if not out:
        raise ValueError(
            f"{text!r} names only TLS 1.3 suites, which OpenSSL always enables; to allow TLS 1.3 only, "
            "set ssl.protocols TLSv1.3"
        )
    return ":".join(out) if translated else text.strip()
