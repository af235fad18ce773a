"""Kaazing login module types wsgate does not implement yet: a config naming one loads (``check-config``
lists it), and building its realm fails with the message declared here."""

from __future__ import annotations

from .base import LoginModuleType


def _not_yet(name: str) -> LoginModuleType:
    return LoginModuleType(name=name, unsupported=f"the {name} login module is not supported yet")


JNDI = _not_yet("jndi")
KEYSTORE = _not_yet("keystore")
