"""Connection and handshake limits: the policy, without I/O (the listener enforces it).

Per service (accept-options): open connections, open connections per client IP, and a
token bucket of handshakes per client IP. Per gateway (``limits``): open connections and
handshakes in progress. A refusal says which limit and the status to answer: 429 for one
client asking too much, 503 when the gateway or service is full. Per-IP state is bounded:
idle buckets and zero counts are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

MAX_TRACKED_IPS = 100_000


class SharedRate(Protocol):
    """A handshake-rate bucket shared by every node (``state/shared-limits: handshake-rate``)."""

    async def take(self, key: str, rate: float, burst: float) -> float:
        """Take one token from ``key``'s bucket; 0 when granted, else the seconds until one is available."""
        ...


@dataclass(frozen=True)
class Refusal:
    status: int  # 429 or 503
    limit: str  # the metric label: connections, connections-per-ip, handshake-rate, handshakes
    retry_after: int  # seconds, for the Retry-After header


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """Take one token; 0 when granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class ServiceLimits:
    """One service's limits and the counts they are checked against."""

    max_connections: int | None = None
    max_per_ip: int | None = None
    rate: float | None = None  # handshakes per second per IP
    burst: float = 1.0
    open: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.max_connections is not None or self.max_per_ip is not None or self.rate is not None

    def enter(self, ip: str, now: float | None = None) -> Refusal | None:
        """Admit one more connection from ``ip`` (call ``leave`` when it ends) or say why not."""
        if self.rate is not None:
            now = time.monotonic() if now is None else now
            wait = self._bucket(ip, now).take(now)
            if wait:
                return Refusal(429, "handshake-rate", max(1, round(wait + 0.5)))
        if self.max_per_ip is not None and self.per_ip.get(ip, 0) >= self.max_per_ip:
            return Refusal(429, "connections-per-ip", 5)
        if self.max_connections is not None and self.open >= self.max_connections:
            return Refusal(503, "connections", 5)
        self.open += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def leave(self, ip: str) -> None:
        self.open -= 1
        count = self.per_ip.get(ip, 1) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)

    def _bucket(self, ip: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED_IPS:
                self._prune(now)
            assert self.rate is not None
            bucket = self.buckets[ip] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: they carry no information."""
        full = [ip for ip, b in self.buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for ip in full:
            del self.buckets[ip]
        if len(self.buckets) >= MAX_TRACKED_IPS:  # a flood of distinct addresses: start over
            self.buckets.clear()


@dataclass
class GatewayLimits:
    """Whole-gateway limits: open connections and handshakes in progress."""

    max_connections: int | None = None
    max_handshakes: int | None = None
    handshakes: int = 0

    def enter_handshake(self, open_connections: int) -> Refusal | None:
        if self.max_connections is not None and open_connections >= self.max_connections:
            return Refusal(503, "gateway-connections", 5)
        if self.max_handshakes is not None and self.handshakes >= self.max_handshakes:
            return Refusal(503, "handshakes", 1)
        self.handshakes += 1
        return None

    def leave_handshake(self) -> None:
        self.handshakes -= 1
