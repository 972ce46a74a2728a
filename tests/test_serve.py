"""`emailservice serve` under Waitress: starts with its dependencies down, recovers by itself."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy.engine import make_url

from tests.support import TcpProxy, api_process, http_get, wait_for


def get_health(port: int) -> tuple[int, dict] | None:
    answer = http_get(port, "/health")
    return (answer[0], json.loads(answer[1])) if answer else None


@pytest.fixture
def proxies(env):
    db = make_url(env["DATABASE_URL"])
    redis = make_url(env["REDIS_URL"])
    pg_proxy = TcpProxy((db.host, db.port))
    redis_proxy = TcpProxy((redis.host, redis.port))
    yield pg_proxy, redis_proxy
    pg_proxy.stop()
    redis_proxy.stop()


def test_serve_starts_while_dependencies_are_down_and_recovers(env, migrated, proxies, tmp_path):
    pg_proxy, redis_proxy = proxies
    db = make_url(env["DATABASE_URL"])
    redis = make_url(env["REDIS_URL"])
    settings = dict(
        env,
        DATABASE_URL=db.set(port=pg_proxy.port).render_as_string(hide_password=False),
        REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/{redis.database}",
        WAITRESS_THREADS="4",
    )
    with api_process(settings, tmp_path) as (port, log):
        status, body = wait_for(lambda: get_health(port))
        assert status == 503
        assert body["checks"] == {"database": "unavailable", "redis": "unavailable"}

        pg_proxy.start()
        assert get_health(port)[1]["checks"] == {"database": "ok", "redis": "unavailable"}
        redis_proxy.start()
        assert get_health(port) == (
            200,
            {
                "status": "ok",
                "checks": {"database": "ok", "redis": "ok"},
                "version": body["version"],
            },
        )

        # Both drop every connection (a restart), then come back: pooled connections are
        # replaced without restarting the API.
        pg_proxy.stop()
        redis_proxy.stop()
        assert get_health(port)[0] == 503
        pg_proxy.start()
        redis_proxy.start()
        assert wait_for(lambda: get_health(port)[0] == 200)
    # Waitress and the app log through the JSON formatter: every line parses.
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_sigterm_answers_the_requests_already_received_then_exits(env, migrated, tmp_path):
    """A restart during a deploy must not cut a request off: the half-received login below is
    answered after SIGTERM, while new connections are already refused."""
    import signal
    import socket
    import subprocess

    from tests.support import EMAILSERVICE, cli_env, free_port

    port = free_port()
    with open(tmp_path / "api.log", "wb") as log:
        server = subprocess.Popen(
            [EMAILSERVICE, "serve", "--port", str(port)],
            env=cli_env(env),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for(lambda: http_get(port, "/health") is not None)
        body = b'{"tenant": "nobody", "username": "nobody", "password": "wrong"}'
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        time.sleep(0.5)  # the server has the start of the request
        server.send_signal(signal.SIGTERM)
        wait_for(lambda: http_get(port, "/health") is None, timeout=5)  # no longer accepting
        assert server.poll() is None  # still finishing the request in flight
        client.sendall(body[10:])
        answer = client.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        client.close()
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serves_every_address_of_a_host_name(env, migrated, tmp_path):
    """API_HOST=localhost on a Debian host, whose /etc/hosts gives localhost both 127.0.0.1
    and ::1: Waitress listens on each address, both answer, and SIGTERM still stops it."""
    import http.client
    import signal
    import subprocess

    from tests.support import EMAILSERVICE, cli_env, free_port

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    port = free_port()
    # A private mount namespace: only this process sees that /etc/hosts.
    script = 'mount --bind "$1" /etc/hosts && exec "$2" serve --host localhost --port "$3"'
    with open(tmp_path / "api.log", "wb") as log:
        server = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script, "sh", str(hosts), EMAILSERVICE, str(port)],
            env=cli_env(env),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for(lambda: server.poll() is not None or http_get(port, "/health") is not None)
        assert server.poll() is None, (tmp_path / "api.log").read_text()[-2000:]
        assert http_get(port, "/health")[0] == 200
        ipv6 = http.client.HTTPConnection("::1", port, timeout=10)
        ipv6.request("GET", "/health")
        assert ipv6.getresponse().status == 200
        ipv6.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_behind_a_trusted_proxy_waitress_hands_the_client_address_on(env, migrated, tmp_path):
    """With TRUSTED_PROXIES=1 (nginx in front, as deployed), the real server passes
    X-Forwarded-For to the app, so per-address login limits count each client apart; Waitress
    3 drops those headers by default, which made every client one address (the proxy's)."""
    import urllib.request

    from tests.support import api_process

    settings = dict(env, TRUSTED_PROXIES="1", LOGIN_RATE_LIMIT_PER_MINUTE="1")
    net = time.time_ns() % 250

    def login(client: str, username: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/login",
            data=json.dumps({"tenant": "nobody", "username": username, "password": "x"}).encode(),
            headers={"Content-Type": "application/json", "X-Forwarded-For": client},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    with api_process(settings, tmp_path) as (port, _):
        assert login(f"198.51.100.{net}", "first") == 401
        assert login(f"198.51.100.{net}", "second") == 429  # that address's one attempt is spent
        assert login(f"203.0.113.{net}", "third") == 401  # another client is not
