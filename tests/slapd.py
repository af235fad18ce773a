"""A throwaway OpenLDAP server for tests: its own cn=config, a random loopback port, StartTLS with a test CA."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .processes import free_port, stop, wait_for_port

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SUFFIX = "dc=example,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "adminpw"

CONFIG = """dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {dir}/slapd.pid
olcTLSCertificateFile: {cert}
olcTLSCertificateKeyFile: {key}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcDbDirectory: {dir}/data
olcRootDN: {admin}
olcRootPW: {password}
olcDbIndex: objectClass eq
olcDbIndex: uid,cn,member eq
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by users read by * none
"""

DATA = """dn: {suffix}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{suffix}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{suffix}
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,{suffix}
objectClass: inetOrgPerson
uid: alice
cn: Alice Admin
sn: Admin
mail: alice@example.test
employeeNumber: 1001
userPassword: alicepw

dn: uid=bob,ou=people,{suffix}
objectClass: inetOrgPerson
uid: bob
cn: Bob User
sn: User
userPassword: bobpw

dn: uid=carol,ou=people,{suffix}
objectClass: inetOrgPerson
uid: carol
cn: Carol Nogroup
sn: Nogroup
userPassword: carolpw

dn: cn=gw-admins,ou=groups,{suffix}
objectClass: groupOfNames
cn: gw-admins
member: uid=alice,ou=people,{suffix}

dn: cn=gw-users,ou=groups,{suffix}
objectClass: groupOfNames
cn: gw-users
member: uid=alice,ou=people,{suffix}
member: uid=bob,ou=people,{suffix}
"""


class Slapd:
    def __init__(self, folder: Path, cert: Path, key: Path) -> None:
        self.folder = folder
        self.cert = cert
        self.key = key
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def setup(self) -> None:
        (self.folder / "slapd.d").mkdir(parents=True)
        (self.folder / "data").mkdir()
        config = CONFIG.format(
            dir=self.folder, cert=self.cert, key=self.key, suffix=SUFFIX, admin=ADMIN_DN, password=ADMIN_PW
        )
        (self.folder / "config.ldif").write_text(config)
        subprocess.run(
            [SLAPADD, "-n0", "-F", str(self.folder / "slapd.d"), "-l", str(self.folder / "config.ldif")],
            check=True,
            capture_output=True,
        )
        (self.folder / "data.ldif").write_text(DATA.format(suffix=SUFFIX))
        subprocess.run(
            [SLAPADD, "-n1", "-F", str(self.folder / "slapd.d"), "-l", str(self.folder / "data.ldif")],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [SLAPD, "-d", "0", "-F", str(self.folder / "slapd.d"), "-h", self.url + "/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, "slapd")

    def stop(self) -> None:
        stop(self.process)
        self.process = None
