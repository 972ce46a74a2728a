"""Verifications never hold the API: one deadline each, a cap per tenant shared by every API
process, a cap per process. Against real `emailservice serve` processes (Waitress) and a peer
of the tests' own that accepts connections and never says a word.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import make_tenant_user
from tests.peers import Listener
from tests.support import allowing, api_process, http_get, wait_for


def post(port: int, path: str, body: dict, headers: dict) -> tuple[int, dict, dict, float]:
    """(status, headers, JSON body, seconds taken) of a POST to a real API process."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, got, data = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, data = error.code, dict(error.headers), error.read()
    return status, got, json.loads(data), time.monotonic() - started


def silent_body(mail_account_body, peer: Listener) -> dict:
    """Settings whose IMAP and SMTP servers both accept and never greet."""
    body = mail_account_body(verify=True)
    for kind in ("imap", "smtp"):
        body[kind].update(host="127.0.0.1", port=peer.port, security="none")
    return body


def assert_timed_out(result, deadline: float) -> None:
    status, _, data, seconds = result
    assert status == 422, data
    assert {d["message"] for d in data["error"]["details"]} == {"timed out"}
    assert seconds < deadline + 3


def test_forty_verifications_against_a_silent_server_never_stop_the_api(
    env, ctx, mail_account_body, tmp_path
):
    deadline = 3
    with Listener(greeting=None) as peer:
        settings = allowing(env, peer.pair) | {
            "VERIFY_TIMEOUT_SECONDS": str(deadline),
            "WAITRESS_THREADS": "8",  # two verifications at once per process (a quarter)
        }
        tenants = [make_tenant_user(ctx, f"v{i}") for i in range(5)]
        body = silent_body(mail_account_body, peer)
        with api_process(settings, tmp_path) as (port, _log):
            health: list[float] = []
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    answer = http_get(port, "/health")
                    health.append(time.monotonic() - started if answer else 99.0)
                    time.sleep(0.1)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                with ThreadPoolExecutor(40) as pool:
                    results = list(
                        pool.map(
                            lambda i: post(
                                port, "/api/accounts", body, tenants[i % 5].headers
                            ),
                            range(40),
                        )
                    )
            finally:
                stop.set()
                watcher.join()
    assert len(health) > 10 and max(health) < 1.0
    verified = [r for r in results if r[0] == 422]
    refused = [r for r in results if r[0] == 429]
    assert len(verified) + len(refused) == 40
    assert verified and refused
    for result in verified:
        assert_timed_out(result, deadline)
    for _status, headers, data, seconds in refused:
        assert data["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1
        assert seconds < deadline + 3
    assert peer.connections >= 2  # the verifications that ran did connect


def test_the_tenant_cap_is_shared_by_api_processes_and_each_process_has_its_own(
    env, ctx, mail_account_body, tmp_path
):
    deadline = 4
    with Listener(greeting=None) as peer:
        settings = allowing(env, peer.pair) | {
            "VERIFY_TIMEOUT_SECONDS": str(deadline),
            "VERIFY_MAX_IN_FLIGHT": "1",
            "VERIFY_MAX_IN_FLIGHT_TOTAL": "2",
        }
        a, b, c, d = (make_tenant_user(ctx, name) for name in "abcd")
        body = silent_body(mail_account_body, peer)
        with (
            api_process(settings, tmp_path) as (first, _),
            api_process(settings, tmp_path) as (second, _),
            ThreadPoolExecutor(4) as pool,
        ):
            held_a = pool.submit(post, first, "/api/accounts", body, a.headers)
            wait_for(lambda: peer.connections >= 2)  # A's IMAP and SMTP connections
            # Tenant A already verifies (in the other process): 429 at once.
            status, headers, data, seconds = post(second, "/api/accounts", body, a.headers)
            assert status == 429 and data["error"]["code"] == "rate_limited"
            assert 1 <= int(headers["Retry-After"]) <= deadline + 5
            assert seconds < 2
            # Other tenants are not held back by A, up to the second process's two slots.
            held_b = pool.submit(post, second, "/api/accounts", body, b.headers)
            held_c = pool.submit(post, second, "/api/accounts", body, c.headers)
            wait_for(lambda: peer.connections >= 6)
            status, headers, data, _ = post(second, "/api/accounts", body, d.headers)
            assert status == 429 and int(headers["Retry-After"]) >= 1
            for held in (held_a, held_b, held_c):
                assert_timed_out(held.result(), deadline)
            # Leases are given back: A verifies again (and times out again).
            assert_timed_out(post(second, "/api/accounts", body, a.headers), deadline)


def test_a_server_dripping_bytes_cannot_stretch_the_deadline(env, tenant_a, mail_account_body):
    """Each byte comes well within any socket timeout; only the one deadline ends it, and the
    process's verification slot is free again right after."""
    from app import create_app

    deadline = 2
    with (
        Listener(drip=b"* OK slow") as imap_peer,
        Listener(drip=b"220-slow") as smtp_peer,
    ):
        settings = allowing(env, imap_peer.pair, smtp_peer.pair) | {
            "VERIFY_TIMEOUT_SECONDS": str(deadline),
            "VERIFY_MAX_IN_FLIGHT_TOTAL": "1",
        }
        client = create_app(settings).test_client()
        body = mail_account_body(verify=True)
        body["imap"].update(host="127.0.0.1", port=imap_peer.port, security="none")
        body["smtp"].update(host="127.0.0.1", port=smtp_peer.port, security="none")
        for _ in range(2):  # the second would be a 429 if the first still held the slot
            started = time.monotonic()
            response = client.post("/api/accounts", json=body, headers=tenant_a.headers)
            seconds = time.monotonic() - started
            assert response.status_code == 422, response.get_json()
            details = response.get_json()["error"]["details"]
            assert {d["field"]: d["message"] for d in details} == {
                "imap": "timed out",
                "smtp": "timed out",
            }
            assert seconds < deadline + 1.5
