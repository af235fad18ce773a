"""JAAS login-module chain semantics, sans I/O.

============  ====================================================  ===================================
flag          module succeeds                                        module fails
============  ====================================================  ===================================
required      continue                                               remember the failure, continue
requisite     continue                                               chain fails now
sufficient    chain succeeds now, unless a required/requisite        continue
              module already failed
optional      continue                                               continue
============  ====================================================  ===================================

The chain succeeds when every required and requisite module succeeded; a chain
with none of them needs at least one sufficient or optional success. Principals
come from every module that succeeded. If the chain fails and any module was
``Unavailable``, the outcome is ``Unavailable`` (503), so an outage never reads as
"wrong password" and never as access (``Busy`` if a module was refused by the realm's
verifier bound, so the realm can count it as a limit); otherwise the first ``Challenged`` answer
(another round for the client) wins over a plain failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .base import Busy, Challenged, Failed, LoginAttempt, LoginModule, Outcome, Succeeded, Unavailable

STRICT = ("required", "requisite")
log = logging.getLogger("wsgate.audit")


@dataclass(frozen=True)
class ChainEntry:
    flag: str  # required | requisite | sufficient | optional
    module: LoginModule
    name: str  # for the audit log: the module type


@dataclass(frozen=True)
class ChainResult:
    outcome: Outcome
    trail: tuple[tuple[str, str], ...]  # (module name, "ok" | reason) for the audit log
    timings: tuple[tuple[str, float], ...] = ()  # (module name, seconds it took) for the metrics


async def run_chain(entries: Sequence[ChainEntry], attempt: LoginAttempt) -> ChainResult:
    successes: list[Succeeded] = []
    trail: list[tuple[str, str]] = []
    strict_failed = unavailable = False
    busy: Busy | None = None
    challenge: Challenged | None = None
    has_strict = any(e.flag in STRICT for e in entries)
    timings: list[tuple[str, float]] = []
    for entry in entries:
        started = time.perf_counter()
        try:
            outcome = await entry.module.login(attempt)
        except Exception:  # a module bug must not become access, nor a 500 with a traceback
            log.exception("login module %s raised; treating it as unable to decide", entry.name)
            outcome = Unavailable(f"{entry.name} raised an error")
        timings.append((entry.name, time.perf_counter() - started))
        trail.append((entry.name, "ok" if isinstance(outcome, Succeeded) else outcome.reason))
        if isinstance(outcome, Succeeded):
            successes.append(outcome)
            if entry.flag == "sufficient" and not strict_failed:
                return ChainResult(_merge(successes), tuple(trail), tuple(timings))
            continue
        unavailable |= isinstance(outcome, Unavailable)
        if isinstance(outcome, Busy) and busy is None:
            busy = outcome
        if isinstance(outcome, Challenged) and challenge is None:
            challenge = outcome
        if entry.flag in STRICT:
            strict_failed = True
            if entry.flag == "requisite":
                break
    succeeded = not strict_failed and (has_strict or bool(successes))
    if succeeded:
        return ChainResult(_merge(successes), tuple(trail), tuple(timings))
    failure: Outcome = Failed("login failed")
    if busy is not None:
        failure = Busy(busy.reason)
    elif unavailable:
        failure = Unavailable("a login module could not decide")
    elif challenge is not None:
        failure = challenge
    return ChainResult(failure, tuple(trail), tuple(timings))


def _merge(successes: list[Succeeded]) -> Succeeded:
    user = next((s.user for s in successes if s.user), None)
    principals = frozenset().union(*(s.principals for s in successes))
    expiries = [s.expires_at for s in successes if s.expires_at is not None]
    token_id = next((s.token_id for s in successes if s.token_id), None)
    response = next((s.response for s in successes if s.response), None)
    return Succeeded(user, principals, min(expiries) if expiries else None, token_id, response)
