"""Prometheus metrics (prometheus-client), one registry per gateway.

Nothing here runs per message: channels count their own messages and bytes in
plain integer slots, and the collector adds them up when ``/metrics`` is scraped.
Counters of closed connections are folded into per-service totals at close, so a
total never goes down when a connection ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Traffic(Protocol):
    """A connection's counters and how it ended (``core.channel.Channel``; observe cannot import core)."""

    @property
    def messages_in(self) -> int: ...

    @property
    def messages_out(self) -> int: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...

    @property
    def close_code(self) -> int | None: ...


class Connection(Protocol):
    """What the metrics read of a live connection (``core.session.LiveSession``): its service and channel."""

    @property
    def service(self) -> str: ...

    @property
    def channel(self) -> Traffic: ...


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AUTH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HANDSHAKE_OUTCOMES = ("101", "401", "403", "429", "503", "other")


# RFC 6455 §7.4.1 and the IANA registry (1004 is reserved); 1005, 1006 and 1015 are recorded, never sent.
REGISTERED_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1005, 1016)))


def handshake_outcome(status: int) -> str:
    return str(status) if status in (101, 401, 403, 429, 503) else "other"


def close_label(code: int | None) -> str:
    """A bounded label for a close code: peers choose 3000-4999 freely and may send anything."""
    if code is None:
        return "1006"
    if code in REGISTERED_CLOSE_CODES:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "invalid"


class Metrics:
    """Every metric the gateway exports (docs/operations.md lists them)."""

    def __init__(self, connections: Callable[[], Iterable[Connection]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections_total = Counter(
            "wsgate_connections", "WebSocket connections accepted", ["service"], registry=self.registry
        )
        self.handshakes = Counter(
            "wsgate_handshakes",
            "WebSocket upgrade requests by outcome (101, 401, 403, 429, 503, other)",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.auth_seconds = Histogram(
            "wsgate_auth_seconds",
            "Time one login module took to decide",
            ["realm", "module"],
            buckets=AUTH_BUCKETS,
            registry=self.registry,
        )
        self.backend_failures = Counter(
            "wsgate_backend_connect_failures", "Back-end connections that failed", ["service"], registry=self.registry
        )
        self.denied = Counter(
            "wsgate_operations_denied",
            "Operations inside connections refused by a service's authorization-rule list "
            "(publish, subscribe, send, ...)",
            ["service", "operation"],
            registry=self.registry,
        )
        self.closes = Counter(
            "wsgate_closes",
            "WebSocket connections closed, by close code (3xxx, 4xxx, invalid: see docs/operations.md)",
            ["service", "code"],
            registry=self.registry,
        )
        self.limited = Counter(
            "wsgate_limited",
            "Requests refused by a limit (connections, rate, handshakes, timeout)",
            ["service", "limit"],
            registry=self.registry,
        )
        self.tls_failures = Counter(
            "wsgate_tls_handshake_failures",
            "TLS handshakes that failed, by reason (closed before handshake, no client certificate, "
            "untrusted client certificate, protocol mismatch, timeout, other)",
            ["reason"],
            registry=self.registry,
        )
        self.accept_errors = Counter(
            "wsgate_accept_errors",
            "Failed accepts of new connections by reason (emfile, enfile: out of descriptors; enobufs, enomem)",
            ["reason"],
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "wsgate_bad_requests",
            "Requests refused as malformed with 400/426 (service empty: refused before routing)",
            ["service"],
            registry=self.registry,
        )
        self.slow_consumers = Counter(
            "wsgate_slow_consumers",
            "WebSocket connections closed 1008 'too slow' for not reading (ws.write.timeout, maximum.pending.bytes)",
            ["service"],
            registry=self.registry,
        )
        self.kdc_proxy_requests = Counter(
            "wsgate_kdc_proxy_requests",
            "KDC proxy (kdc.proxy) requests by result (ok, method, media_type, too_large, malformed, type, realm, "
            "busy, unavailable, bad_reply, client_gone)",
            ["service", "result"],
            registry=self.registry,
        )
        self.kdc_proxy_seconds = Histogram(
            "wsgate_kdc_proxy_seconds",
            "Time a KDC took to answer a proxied request, connecting included",
            ["service"],
            buckets=AUTH_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter("wsgate_reloads", "Configuration reloads by result", ["result"], registry=self.registry)
        self.state_errors = Counter(
            "wsgate_state_errors",
            "Failed exchanges with the shared state (Redis) by operation (read, write, publish, listen, registry)",
            ["operation"],
            registry=self.registry,
        )
        self.traffic = TrafficCollector(connections)
        self.registry.register(self.traffic)

    def watch_state(self, up: Callable[[], bool], operations: Iterable[str]) -> None:
        """Export ``wsgate_state_up`` (read at scrape time) and every ``operation`` of ``wsgate_state_errors``
        at 0, for a gateway whose state is shared (state: redis)."""
        gauge = Gauge(
            "wsgate_state_up",
            "1 if the last exchange with the shared state (Redis) worked, else 0",
            registry=self.registry,
        )
        gauge.set_function(lambda: 1.0 if up() else 0.0)
        for operation in operations:
            self.state_errors.labels(operation)

    def connection_closed(self, connection: Connection) -> None:
        self.traffic.fold(connection)
        self.closes.labels(connection.service, close_label(connection.channel.close_code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def chart_sample(self) -> dict[str, Any]:
        """The totals the management console charts (``GET <path>/api/stats``), read from what is kept
        anyway, as a scrape reads it: per-service traffic, handshakes by outcome summed over services,
        and the login-module histogram summed over realms and modules. Counters only grow (until a
        restart); the console turns successive samples into rates and quantiles."""
        handshakes = dict.fromkeys(HANDSHAKE_OUTCOMES, 0)
        for family in self.handshakes.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    handshakes[outcome] = handshakes.get(outcome, 0) + int(sample.value)
        buckets = [0] * (len(AUTH_BUCKETS) + 1)  # cumulative, the last one +Inf (= the count)
        total = 0.0
        index = {str(bound): i for i, bound in enumerate(AUTH_BUCKETS)} | {"+Inf": len(AUTH_BUCKETS)}
        for family in self.auth_seconds.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[index[sample.labels["le"]]] += int(sample.value)
                elif sample.name.endswith("_sum"):
                    total += sample.value
        services = {
            service: {
                "open": open_now,
                "messages_in": m_in,
                "messages_out": m_out,
                "bytes_in": b_in,
                "bytes_out": b_out,
            }
            for service, (open_now, m_in, m_out, b_in, b_out) in self.traffic.totals().items()
        }
        return {
            "services": services,
            "handshakes": handshakes,
            "auth": {"le": list(AUTH_BUCKETS), "buckets": buckets[:-1], "count": buckets[-1], "sum": round(total, 6)},
        }


class TrafficCollector(Collector):
    """Open connections, messages and bytes by service, computed at scrape time."""

    def __init__(self, connections: Callable[[], Iterable[Connection]]) -> None:
        self.connections = connections
        # service -> [messages in, messages out, bytes in, bytes out] of connections already closed
        self.closed: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def fold(self, connection: Connection) -> None:
        totals = self.closed[connection.service]
        channel = connection.channel
        totals[0] += channel.messages_in
        totals[1] += channel.messages_out
        totals[2] += channel.bytes_in
        totals[3] += channel.bytes_out

    def describe(self) -> Iterator[Metric]:
        yield from self._families()
        yield GaugeMetricFamily("wsgate_connections_open_by_transport", "", labels=["service", "transport"])

    def totals(self) -> dict[str, tuple[int, int, int, int, int]]:
        """service -> (open now, messages in, messages out, bytes in, bytes out), closed connections included."""
        open_by: defaultdict[str, int] = defaultdict(int)
        traffic = {service: list(values) for service, values in self.closed.items()}
        for connection in list(self.connections()):
            open_by[connection.service] += 1
            totals = traffic.setdefault(connection.service, [0, 0, 0, 0])
            channel = connection.channel
            totals[0] += channel.messages_in
            totals[1] += channel.messages_out
            totals[2] += channel.bytes_in
            totals[3] += channel.bytes_out
        return {
            service: (open_by[service], m_in, m_out, b_in, b_out)
            for service, (m_in, m_out, b_in, b_out) in traffic.items()
        }

    def collect(self) -> Iterator[Metric]:
        gauge, messages, data = self._families()
        for service, (open_now, m_in, m_out, b_in, b_out) in self.totals().items():
            if open_now:
                gauge.add_metric([service], open_now)
            messages.add_metric([service, "in"], m_in)
            messages.add_metric([service, "out"], m_out)
            data.add_metric([service, "in"], b_in)
            data.add_metric([service, "out"], b_out)
        yield from (gauge, messages, data)
        yield self.by_transport()

    def by_transport(self) -> GaugeMetricFamily:
        """Open connections by what carries them (``websocket``, ``wse``, …: a handful of adapters, bounded)."""
        family = GaugeMetricFamily(
            "wsgate_connections_open_by_transport",
            "Connections open now by transport (websocket: native; wse: WebSocket emulation)",
            labels=["service", "transport"],
        )
        counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        for connection in list(self.connections()):
            counts[connection.service, getattr(connection, "transport", "websocket")] += 1
        for (service, transport), count in counts.items():
            family.add_metric([service, transport], count)
        return family

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("wsgate_connections_open", "WebSocket connections open now", labels=["service"]),
            CounterMetricFamily(
                "wsgate_messages", "WebSocket messages (in: from clients)", labels=["service", "direction"]
            ),
            CounterMetricFamily(
                "wsgate_bytes", "WebSocket payload bytes (in: from clients)", labels=["service", "direction"]
            ),
        )
