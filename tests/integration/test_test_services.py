"""The test services themselves: the private Redis server (tests/support/redis.py) and nginx in
front of replicas (tests/support/nginx.py) do what the replica tests rely on."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bench._common import ServerProcess, free_port
from tests.support.nginx import NginxBalancer, nginx_config, require_nginx_bin
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


def test_missing_binaries_skip_outside_ci_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMLB_TEST_REDIS_SERVER", "/nonexistent/redis-server")
    monkeypatch.setenv("LLMLB_TEST_NGINX", "/nonexistent/nginx")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y redis-server"):
        require_redis_bin()
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y nginx"):
        require_nginx_bin()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        require_redis_bin()
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        require_nginx_bin()


@pytest.fixture
def two_upstreams(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two tiny HTTP servers (``python -m http.server``) on loopback; ``/who`` names each."""
    started: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "who").write_text(name)
            (folder / "health").write_text("ok")
            port = free_port()
            proc = ServerProcess(
                f"upstream-{name}",
                "http.server",
                [str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
                tmp_path / f"{name}.log",
                f"http://127.0.0.1:{port}",
            )
            started.append(proc)
            proc.start().wait_healthy(20)
        yield started
    finally:
        for proc in started:
            proc.stop()


def address(proc: ServerProcess) -> str:
    return proc.url.removeprefix("http://")


def test_nginx_balances_and_skips_a_dead_upstream(
    nginx_balancer: Callable[..., NginxBalancer], two_upstreams: list[ServerProcess]
) -> None:
    a, b = two_upstreams
    lb = nginx_balancer([address(a), address(b)])
    with httpx.Client(base_url=lb.url, timeout=10) as http:
        seen = []
        for _ in range(8):
            response = http.get("/who")
            assert response.status_code == 200, lb.log_tail()
            seen.append(response.text)
        assert set(seen) == {"a", "b"}, seen

        a.signal(signal.SIGKILL)
        assert a.popen is not None
        a.popen.wait(10)
        for _ in range(8):
            response = http.get("/who")
            assert response.status_code == 200, lb.log_tail()
            assert response.text == "b"


def test_nginx_stops_and_removes_its_folder(two_upstreams: list[ServerProcess]) -> None:
    with NginxBalancer([address(two_upstreams[0])]) as lb:
        root = lb.root
        assert root is not None and (root / "nginx.conf").exists()
        assert httpx.get(f"{lb.url}/who", timeout=10).text == "a"
        popen = lb.popen
    assert popen is not None and popen.poll() is not None
    assert not root.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{lb.url}/who", timeout=2)


def test_nginx_config_names_every_upstream_and_keeps_paths_inside(tmp_path: Path) -> None:
    text = nginx_config(tmp_path, 8080, ["127.0.0.1:1", "127.0.0.1:2"])
    assert "server 127.0.0.1:1 max_fails=1 fail_timeout=2s;" in text
    assert "server 127.0.0.1:2 max_fails=1 fail_timeout=2s;" in text
    assert "listen 127.0.0.1:8080;" in text
    assert "proxy_next_upstream error timeout;" in text
    for directive in ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path"):
        assert f"{directive} {tmp_path}/" in text


def test_a_server_whose_free_port_was_taken_meanwhile_moves_to_another(tmp_path: Path) -> None:
    """Two xdist workers can pick the same free port: the one that loses gets another."""
    import socket

    from tests.support.servers import router_proc

    router = router_proc(tmp_path)
    taken = int(router.url.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            router.start().wait_healthy()
            assert router.url != f"http://127.0.0.1:{taken}"
            assert "is in use" in router.log()
        finally:
            router.stop()
