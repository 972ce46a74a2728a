"""Redis for a stack: a claimed empty database on a reused server, or a redis-server of its own."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devstack.errors import StackError, client_module
from devstack.proc import kill, pid_alive, read_pidfile, run, running_in, tail, wait_until

CLAIM_KEY = "emailservice:devstack:claim"
# Long enough for any test run or dev session; persistent stacks refresh it on every start.
CLAIM_TTL = 30 * 24 * 3600


def server_url(url: str, db: int) -> str:
    """The same server URL (credentials and options kept) pointing at database `db`."""
    parts = urlsplit(url)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", query, ""))


def ping(port: int, host: str = "127.0.0.1") -> bool:
    """True when a Redis server answers PING (raw protocol: no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _client(url: str, db: int | None = None):  # -> redis.Redis
    """A client for database `db` of the server in `url`.

    The number goes into the URL: redis-py lets a URL's /N win over a db= argument, so passing
    db= with a URL ending in /0 would silently talk to (and flush!) database 0.
    """
    redis = client_module("redis")
    if db is not None:
        url = server_url(url, db)
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    if db is not None and client.connection_pool.connection_kwargs.get("db", 0) != db:
        raise StackError(f"Redis client for {url} would not use database {db}")
    return client


def answers(url: str) -> bool:
    """True when the Redis server in `url` answers PING."""
    redis = client_module("redis")

    try:
        return bool(_client(url).ping())
    except redis.RedisError:
        return False


def _stale(claim: dict) -> bool:
    """A claim whose stack is gone: same host, and its state dir vanished, or a throwaway stack
    whose starting process and daemons are all dead (a crashed test run)."""
    if claim.get("host") != socket.gethostname():
        return False
    state_dir = claim.get("state_dir", "")
    if not state_dir or not Path(state_dir).is_dir():
        return True
    if claim.get("persistent") or pid_alive(claim.get("pid")):
        return False
    try:
        pids = json.loads((Path(state_dir) / "stack.json").read_text()).get("pids", {})
    except (OSError, ValueError):
        pids = {}
    return not any(pid_alive(pid) for pid in pids.values())


def claim_db(url: str, owner: dict, prefer: int | None = None) -> int:
    """Claim an empty database 1..15 (or `prefer` if already ours); return its number."""
    value = json.dumps(owner, sort_keys=True)
    if prefer:
        client = _client(url, prefer)
        current = client.get(CLAIM_KEY)
        if current is not None and json.loads(current).get("state_dir") == owner["state_dir"]:
            client.set(CLAIM_KEY, value, ex=CLAIM_TTL)
            return prefer
        if current is None and client.set(CLAIM_KEY, value, nx=True, ex=CLAIM_TTL):
            return prefer  # our data is there, the claim had expired
    for db in range(1, 16):
        client = _client(url, db)
        current = client.get(CLAIM_KEY)
        if current is not None:
            try:
                stale = _stale(json.loads(current))
            except ValueError:
                stale = False
            if stale:
                _release(client, current)
        if client.dbsize() == 0 and client.set(CLAIM_KEY, value, nx=True, ex=CLAIM_TTL):
            return db
    raise StackError(f"no empty Redis database among 1..15 on {server_url(url, 0)} to claim")


def _release(client, expected: bytes | str) -> bool:
    """FLUSHDB this one database, but only while the claim in it is still `expected`."""
    redis = client_module("redis")
    if client.connection_pool.connection_kwargs.get("db", 0) == 0:
        raise StackError("refusing to flush database 0 of a shared Redis server (never claimed)")
    expected = expected.encode() if isinstance(expected, str) else expected
    with client.pipeline() as pipe:
        try:
            pipe.watch(CLAIM_KEY)
            if pipe.get(CLAIM_KEY) != expected:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.flushdb()
            pipe.execute()
            return True
        except redis.WatchError:
            return False


def release_db(url: str, db: int, state_dir: str) -> None:
    """Empty and unclaim database `db` if it is still claimed by the stack in `state_dir`."""
    client = _client(url, db)
    current = client.get(CLAIM_KEY)
    if current is not None and json.loads(current).get("state_dir") == state_dir:
        _release(client, current)


def flush_claimed(url: str, db: int) -> None:
    """Empty a claimed database but keep the claim (FLUSHDB would hand it to the next stack)."""
    client = _client(url, db)
    with client.pipeline(transaction=True) as pipe:
        claim, ttl = client.get(CLAIM_KEY), client.ttl(CLAIM_KEY)
        pipe.flushdb()
        if claim is not None:
            pipe.set(CLAIM_KEY, claim, ex=max(ttl, 60))
        pipe.execute()


def server_pid(pidfile: Path) -> int | None:
    """The pid of our redis-server, or None when it is not running."""
    pid = read_pidfile(pidfile)
    return pid if running_in(pid, pidfile.parent) else None


def start_server(directory: Path, port: int, logfile: Path) -> int:
    """Start a daemonized redis-server on 127.0.0.1:port, data in `directory`; return its pid."""
    directory.mkdir(parents=True, exist_ok=True)
    pidfile = directory / "redis.pid"
    run(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            # Jobs survive a kill -9 of the server (as on deployed hosts): queued, scheduled
            # and retried work is on disk within a second (appendfsync everysec).
            "--appendonly",
            "yes",
            "--dir",
            str(directory),
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(logfile),
            "--daemonize",
            "yes",
            "--databases",
            "16",
        ],
        what="redis-server",
        log=logfile.parent / "daemons.log",
    )
    if not wait_until(lambda: ping(port) and server_pid(pidfile) is not None, 10):
        raise StackError(f"redis-server did not answer on port {port}; {tail(logfile)}")
    pid = server_pid(pidfile)
    assert pid is not None
    return pid


def stop_server(directory: Path, port: int, *, save: bool) -> None:
    """Stop our redis-server; with save, snapshot first so a persistent stack keeps its data."""
    pid = server_pid(directory / "redis.pid")
    if pid is None:
        return
    if save:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"SHUTDOWN SAVE\r\n")
                sock.recv(64)
        except OSError:
            pass
        wait_until(lambda: not pid_alive(pid), 10)
    kill(pid)
    (directory / "redis.pid").unlink(missing_ok=True)
