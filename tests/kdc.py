"""A throwaway MIT Kerberos KDC for tests: realm EXAMPLE.TEST on a random loopback port.

Principals: ``alice``/``bob``/``carol`` (passwords ``<name>pw``) and the gateway's service principal
``HTTP/localhost`` in ``http.keytab``. ``krb5.conf`` is what the gateway and the test clients read
(``KRB5_CONFIG``, set for the whole test process by the ``kdc`` fixture); ``proxied_config`` writes
another one whose only KDC is an HTTPS KDC proxy (MS-KKDCP), for ``kinit`` through the gateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .processes import free_port, stop, wait_for_port

REALM = "EXAMPLE.TEST"
SERVICE = "HTTP/localhost"
USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
KRB5KDC = shutil.which("krb5kdc") or "/usr/sbin/krb5kdc"
KDB5_UTIL = shutil.which("kdb5_util") or "/usr/sbin/kdb5_util"
KADMIN_LOCAL = shutil.which("kadmin.local") or "/usr/sbin/kadmin.local"
KINIT = shutil.which("kinit") or "/usr/bin/kinit"
KVNO = shutil.which("kvno") or "/usr/bin/kvno"


def installed() -> bool:
    return all(os.path.exists(p) for p in (KRB5KDC, KDB5_UTIL, KADMIN_LOCAL, KINIT))


def client_config(kdc: str, extra: str = "") -> str:
    """``krb5.conf`` for a realm whose KDC is ``kdc`` (``127.0.0.1:port`` or ``https://…``)."""
    return f"""[libdefaults]
  default_realm = {REALM}
  dns_lookup_realm = false
  dns_lookup_kdc = false
  dns_canonicalize_hostname = false
  rdns = false
  udp_preference_limit = 1
  clockskew = 1
[realms]
  {REALM} = {{
    kdc = {kdc}
{extra}  }}
[domain_realm]
  localhost = {REALM}
"""


class Kdc:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.folder / "krb5.conf"

    @property
    def keytab(self) -> Path:
        return self.folder / "http.keytab"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, config: Path | None = None) -> dict[str, str]:
        return {"KRB5_CONFIG": str(config or self.config), "KRB5_KDC_PROFILE": str(self.folder / "kdc.conf")}

    def setup(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.config.write_text(client_config(self.address))
        (self.folder / "kdc.conf").write_text(
            f"""[kdcdefaults]
  kdc_listen = {self.address}
  kdc_tcp_listen = {self.address}
[realms]
  {REALM} = {{
    database_name = {self.folder}/principal
    key_stash_file = {self.folder}/stash
    acl_file = {self.folder}/kadm5.acl
    max_life = 10h
    default_principal_flags = +preauth
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
  }}
[logging]
  kdc = FILE:{self.folder}/kdc.log
"""
        )
        (self.folder / "kadm5.acl").write_text(f"*/admin@{REALM} *\n")
        self.run(KDB5_UTIL, "create", "-s", "-r", REALM, "-P", "master-secret")
        for user, password in USERS.items():
            self.admin(f"addprinc -pw {password} {user}")
        self.admin(f"addprinc -randkey {SERVICE}")
        self.admin(f"ktadd -k {self.keytab} {SERVICE}")

    def admin(self, query: str) -> None:
        self.run(KADMIN_LOCAL, "-r", REALM, "-q", query)

    def run(self, *argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or self.env())},
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self.process = subprocess.Popen(
            [KRB5KDC, "-n", "-r", REALM],
            env={**os.environ, **self.env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, "krb5kdc")

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def kinit(self, user: str, ccache: Path, lifetime: str | None = None, config: Path | None = None) -> Path:
        """A TGT for ``user`` in the file credential cache ``ccache``."""
        argv = [KINIT, "-c", f"FILE:{ccache}"]
        if lifetime:
            argv += ["-l", lifetime]
        self.run(*argv, user, stdin=USERS[user] + "\n", env=self.env(config))
        return ccache

    def proxied_config(self, path: Path, url: str, anchors: Path) -> Path:
        """A ``krb5.conf`` whose only KDC for the realm is the KDC proxy at ``url`` (MS-KKDCP over HTTPS)."""
        path.write_text(client_config(url, f"    http_anchors = FILE:{anchors}\n"))
        return path


def realm_yaml(kdc: Kdc, scheme: str = "Negotiate", options: str = "", modules: str = "") -> str:
    """The ``realm`` list of a ``security`` block: realm ``corp`` checking tickets with ``kdc``'s keytab
    (``kerberos5`` then ``gss``), role AUTHORIZED for alice and bob. ``options``: more kerberos5 option
    lines (16 spaces in); ``modules``: more login-module items after them."""
    return f"""  realm:
    - name: corp
      authentication:
        http-challenge-scheme: {scheme}
        login-modules:
          login-module:
            - type: kerberos5
              options:
                useKeyTab: "true"
                keyTab: {kdc.keytab}
                principal: {SERVICE}@{REALM}
                isInitiator: "false"
                storeKey: "true"
                doNotPrompt: "true"
                replay-cache: {kdc.folder / "rcache"}
                role.AUTHORIZED: alice@{REALM}, bob@{REALM}
{options}
            - type: gss
{modules}"""
