"""The ``message.policy`` of docs/examples/message-policy.yaml: orders above a size limit never reach the back end.

wsgate imports it from the config file's folder (after ``sys.path``) and calls ``OrderLimits()`` once per
service; the object is then called for every message the service's rules allowed, on the event loop:
keep it quick, synchronous and free of I/O. It answers ``allow``, ``drop`` or ``close`` (1008); whatever
it raises refuses the message (fail closed) and is counted in ``wsgate_message_policy_errors_total``.
"""

from __future__ import annotations

import json

from wsgate.services.messages import ALLOW, DROP, RECEIVE

LIMIT = 1000


class OrderLimits:
    def __call__(self, identity, direction, data):  # type: ignore[no-untyped-def]
        if direction == RECEIVE:  # what the back end answers: the rules already decided
            return ALLOW
        order = json.loads(data)  # the rules let only JSON objects with "type": "order" through
        quantity = order.get("quantity")
        if type(quantity) is int and 0 < quantity <= LIMIT:
            return ALLOW
        return DROP
