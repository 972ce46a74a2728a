"""Helpers shared by tests: running the installed CLI, finding dead ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import SETTINGS
from devstack.dev import mail_pairs

__all__ = ["mail_pairs"]  # the stack's own allow list, for tests' settings

# The installed console script, beside the interpreter running the tests.
EMAILSERVICE = str(Path(sys.executable).with_name("emailservice"))


def cli_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any service setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(settings)
    return env


def run_cli(
    args: list[str],
    settings: dict[str, str],
    cwd: Path,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run `emailservice ARGS` with exactly `settings` as its configuration."""
    return subprocess.run(
        [EMAILSERVICE, *args],
        env=cli_env(settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def allowing(settings: dict[str, str], *pairs: str) -> dict[str, str]:
    """`settings` whose ALLOWED_PRIVATE_HOSTS also allows `pairs` (HOST:PORT of a test's own
    peer): the outbound host policy refuses every loopback address nothing allows."""
    allowed = [e for e in settings.get("ALLOWED_PRIVATE_HOSTS", "").split(",") if e]
    return dict(settings, ALLOWED_PRIVATE_HOSTS=",".join([*allowed, *pairs]))


def free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """A loopback TCP forwarder that a test can switch off and on, to play a server outage.

    Off means nothing listens on its port and every forwarded connection is cut, which is what
    a client sees when the server behind it restarts.
    """

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut_budget: int | None = None

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b, downstream in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, downstream), daemon=True).start()

    def cut_after_bytes(self, count: int) -> None:
        """Stop (cut every connection) once `count` more bytes came from the server."""
        with self._lock:
            self._cut_budget = count

    def _pipe(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if downstream and self._cut_budget is not None:
                    with self._lock:
                        self._cut_budget -= len(data)
                        cut = self._cut_budget <= 0
                    if cut:
                        self._cut_budget = None
                        self.stop()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1):
    """Poll until `predicate()` is truthy and return it, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes] | None:
    """(status, body) of GET http://127.0.0.1:port/path, or None when nothing answers."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None


@contextmanager
def app_through_redis_proxy(settings: dict[str, str]):
    """A test client of the API whose Redis connections go through a TcpProxy: stop the proxy
    for an outage, start it again for the recovery. Yields (client, proxy)."""
    from sqlalchemy.engine import make_url

    from app import create_app

    redis = make_url(settings["REDIS_URL"])
    proxy = TcpProxy((redis.host, redis.port))
    proxy.start()
    try:
        url = f"redis://127.0.0.1:{proxy.port}/{redis.database}"
        yield create_app(dict(settings, REDIS_URL=url)).test_client(), proxy
    finally:
        proxy.stop()


@contextmanager
def api_process(settings: dict[str, str], cwd: Path) -> Iterator[tuple[int, Path]]:
    """A real `emailservice serve` on a free port; yields (port, path of its stderr log)."""
    port = free_port()
    log = cwd / f"api-{port}.log"
    with open(log, "wb") as stderr:
        server = subprocess.Popen(
            [EMAILSERVICE, "serve", "--port", str(port)],
            env=cli_env(settings),
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: http_get(port, "/health") is not None)
        yield port, log
    finally:
        server.terminate()
        server.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc: RQ's work-horses start sessions of their own,
    so killing the worker's process group misses them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid` and everything below it, as a machine crash or the OOM killer would."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


class Processes:
    """`emailservice` processes started by a test, stopped (and reaped) at its end."""

    def __init__(self, settings: dict[str, str], cwd) -> None:
        self.settings = settings
        self.cwd = cwd
        self.running: list[subprocess.Popen] = []

    def start(self, *args: str, **overrides: str) -> subprocess.Popen:
        log = open(self.cwd / f"{args[0]}-{len(self.running)}.log", "wb")
        process = subprocess.Popen(
            [EMAILSERVICE, *args],
            env=cli_env({**self.settings, **overrides}),
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
