"""Review of the shared state (Redis): regressions for defects found by an attacker-minded review."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest

from wsgate.config.model import State
from wsgate.core.identity import Identity
from wsgate.state.redis import RedisSessions, RedisState


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def state(redis_server):
    shared = RedisState(State(type="redis", url=redis_server.url, node="review"))
    await shared.start()
    try:
        yield shared
    finally:
        await shared.close()


async def test_a_users_session_set_expires_with_its_last_session(state) -> None:
    sessions = RedisSessions(state, "demo")
    expires_at = time.time() + 60
    await sessions.issue(Identity("demo", "joe", frozenset(), None, None, time.time()), expires_at)
    ttl = await state.client.pttl(state.key("user-sessions", "demo", "joe"))
    assert 0 < ttl <= 60_000  # -1 (no expiry): one set per user that ever logged in, kept for ever
