"""aiofastnet 1.2.0: a server SSLContext with an ``sni_callback`` (or a ``keylog_filename``) segfaults.

Versions: aiofastnet 1.2.0, CPython 3.11.7, OpenSSL 3.0.19, Linux x86_64; the stdlib asyncio loop
(uvloop 0.23.0 crashes the same way: ``--uvloop``). Needs only aiofastnet and trustme.

What happens: the first TLS handshake on a ``create_server(ssl=ctx)`` of a patched loop kills the process
with SIGSEGV as soon as ``ctx`` has an ``sni_callback``, whatever the callback does (nothing, or switch
``ssl_object.context`` to serve another certificate) and whether or not the client sends SNI. The same
happens with ``ctx.keylog_filename`` set (which ``ssl.create_default_context()`` does when SSLKEYLOGFILE is
set). gdb: ``_servername_callback`` (Modules/_ssl.c) and ``_PySSL_keylog_callback`` (Modules/_ssl/
debughelpers.c), called by libssl from ``SSLEngineDirect.do_handshake``.

Expected: the handshake completes and the callback is called with an object whose ``context`` can be
switched, as with the unpatched loop (the ``plain`` case) and with aiofastnet's own stdlib-SSLObject engine
(the ``fallback`` case, forced with the private ``_aiofastnet_force_fallback_ssl`` attribute); or, at
least, a clear error instead of a crash.

Command: ``python aiofastnet-1.py [--uvloop]``. Each case runs in a child process; the parent prints how
it ended. Exit status 0 when every case behaved as listed in CASES (so 0 means "reproduced").
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import tempfile

import trustme

# case -> (what the child does, how it ends on aiofastnet 1.2.0)
CASES = {
    "plain": ("unpatched loop, SNI callback switches context", "ok"),
    "fallback": ("patched loop, _aiofastnet_force_fallback_ssl, callback switches", "ok"),
    "sni-noop": ("patched loop, callback does nothing, client sends SNI", "SIGSEGV"),
    "sni-switch": ("patched loop, callback switches context, client sends SNI", "SIGSEGV"),
    "no-sni": ("patched loop, callback does nothing, client sends no SNI", "SIGSEGV"),
    "keylog": ("patched loop, no callback, keylog_filename set", "SIGSEGV"),
}


async def handshake(case: str) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("a.example", "127.0.0.1"), ca.issue_cert("b.example")
    server_a = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    first.configure_cert(server_a)
    server_b = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    second.configure_cert(server_b)

    def select(ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name == "b.example" and case != "sni-noop" and case != "no-sni":
            ssl_object.context = server_b

    if case == "keylog":
        server_a.keylog_filename = tempfile.mktemp()
    else:
        server_a.sni_callback = select
    if case == "fallback":
        server_a._aiofastnet_force_fallback_ssl = True  # type: ignore[attr-defined]
    if case != "plain":
        import aiofastnet

        aiofastnet.patch_loop(asyncio.get_running_loop())

    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_a)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context()
    ca.configure_trust(client)
    name = None if case == "no-sni" else "b.example" if case != "sni-noop" else "a.example"
    # server_hostname=None with an IP address: the client sends no SNI and checks the IP SAN
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=name)
    print("served", writer.get_extra_info("peercert")["subjectAltName"][0][1], flush=True)
    writer.close()
    server.close()


def child(case: str, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.run(handshake(case))
    else:
        asyncio.run(handshake(case))


def main() -> int:
    use_uvloop = "--uvloop" in sys.argv
    reproduced = True
    for case, (what, expected) in CASES.items():
        args = [sys.executable, __file__, "--child", case] + (["--uvloop"] if use_uvloop else [])
        run = subprocess.run(args, capture_output=True, text=True, timeout=60)
        ended = (
            "ok"
            if run.returncode == 0
            else (signal.Signals(-run.returncode).name if run.returncode < 0 else f"exit {run.returncode}")
        )
        reproduced &= ended == expected
        print(f"{case:11} {ended:8} {what}; {run.stdout.strip()}")
    print("reproduced" if reproduced else "NOT reproduced (see the table)")
    return 0 if reproduced else 1


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[sys.argv.index("--child") + 1], "--uvloop" in sys.argv)
    else:
        sys.exit(main())
