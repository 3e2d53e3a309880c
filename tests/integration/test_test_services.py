"""The test services themselves: the private Redis server (tests/support/redis.py) does what the
replica tests rely on."""

from __future__ import annotations

import pytest
import redis

from tests.support.redis import RedisServer, require_redis_bin


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def test_redis_answers_ping_and_keeps_keys(redis_url: str) -> None:
    conn = client(redis_url)
    assert conn.ping() is True
    conn.set("k", "v")
    assert conn.get("k") == b"v"
    assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")


def test_redis_url_starts_empty(redis_server: RedisServer, redis_url: str) -> None:
    conn = client(redis_url)
    assert conn.dbsize() == 0
    conn.set("left-behind", "1")
    redis_server.flush()
    assert conn.dbsize() == 0


def test_redis_down_then_up_on_the_same_port_empty(redis_server: RedisServer, redis_url: str) -> None:
    conn = client(redis_url)
    conn.set("before", "1")
    port = redis_server.port
    redis_server.down()
    with pytest.raises(redis.exceptions.ConnectionError):
        client(redis_url).ping()
    redis_server.up()
    assert redis_server.port == port and redis_server.url == redis_url
    fresh = client(redis_url)
    assert fresh.ping() is True
    assert fresh.dbsize() == 0  # nothing persisted


def test_redis_url_brings_back_a_server_left_down(redis_server: RedisServer) -> None:
    redis_server.down()
    assert not redis_server.running
    # What the fixture does before each test.
    redis_server.up()
    redis_server.flush()
    assert client(redis_server.url).ping() is True


def test_missing_redis_skips_outside_ci_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLB_TEST_REDIS_SERVER", "/nonexistent/redis-server")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y redis-server"):
        require_redis_bin()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        require_redis_bin()
