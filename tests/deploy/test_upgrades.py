"""Upgrades without downtime on the deployed host, watched from outside (level 4 in
docs/deploy.md): a redeploy with a new release restarts the API instances one at a time behind
nginx while clients keep calling, and a worker that is stopped finishes the job it is running
first."""

from __future__ import annotations

import secrets
import threading
import time
import uuid

import pytest

from tests.deploy.deployment import Deployment, api, package_version, snapshot

pytestmark = pytest.mark.level4

# Runs a Python snippet with the deployed release and settings, as the service user; the
# settings reach it through its environment, never a command line.
DEPLOYED_PYTHON = (
    "cd /var/lib/emailservice && runuser -u emailservice -- sh -c "
    "'set -a; . /etc/emailservice/emailservice.env; set +a; "
    "exec /opt/emailservice/current/venv/bin/python -'"
)


def _tokens(deployed: Deployment, count: int) -> list[str]:
    """Tokens of users of `count` tenants: rate limits are per tenant (60 requests a minute),
    so several let the clients below call /api often without a 429."""
    tokens = []
    for _ in range(count):
        tenant = f"upgrade-{uuid.uuid4().hex[:8]}"
        host = deployed.host
        assert host.run(f"emailservice tenant create {tenant}").returncode == 0
        user = host.run(
            f"emailservice user create --tenant {tenant} ops", input=secrets.token_urlsafe(18)
        )
        assert user.returncode == 0, user.stderr
        tokens.append(host.run(f"emailservice token --tenant {tenant} ops").stdout.strip())
    return tokens


class Clients:
    """Threads calling the API through nginx until stopped; every answer is recorded."""

    def __init__(self, deployed: Deployment, tokens: list[str]) -> None:
        self.deployed, self.tokens = deployed, tokens
        self.stopping = threading.Event()
        self.answers: list[tuple[float, str, int, str | None]] = []
        self.threads = [
            threading.Thread(target=self._health, daemon=True),
            threading.Thread(target=self._health, daemon=True),
            threading.Thread(target=self._accounts, daemon=True),
        ]

    def _record(self, what: str, status: int, version: str | None = None) -> None:
        self.answers.append((time.monotonic(), what, status, version))

    def _health(self) -> None:
        while not self.stopping.is_set():
            status, body = api(self.deployed.address, self.deployed.ca, "/health", timeout=30)
            self._record("/health", status, (body or {}).get("version"))

    def _accounts(self) -> None:
        # Just under each tenant's limit: len(tokens) tenants, 60 requests a minute each.
        pause = 60 / 55 / len(self.tokens)
        while not self.stopping.is_set():
            for token in self.tokens:
                status, _ = api(
                    self.deployed.address,
                    self.deployed.ca,
                    "/api/accounts",
                    token=token,
                    timeout=30,
                )
                self._record("/api/accounts", status)
                time.sleep(pause)

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def _main_pids(host, units: list[str]) -> dict[str, str]:
    return {
        unit: host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip() for unit in units
    }


def test_a_redeploy_with_a_new_release_fails_no_request(deployed, tmp_path):
    host = deployed.host
    apis = ["emailservice-api@8001.service", "emailservice-api@8002.service"]
    old_version = deployed.api("/health")[1]["version"]
    new_version = f"{package_version(deployed.source)}+upgrade.{uuid.uuid4().hex[:8]}"
    source = snapshot(tmp_path / "source", version=new_version)
    tokens = _tokens(deployed, 4)
    before = _main_pids(host, apis)

    with Clients(deployed, tokens) as clients:
        time.sleep(2)  # answers from the old release first
        started = time.monotonic()
        redeploy = deployed.deploy(source)
        finished = time.monotonic()
        time.sleep(2)
    assert redeploy.returncode == 0, redeploy.stdout[-4000:] + redeploy.stderr[-2000:]
    for value in deployed.secrets.values():
        assert value not in redeploy.stdout + redeploy.stderr

    during = [a for a in clients.answers if started <= a[0] <= finished]
    failed = [a for a in clients.answers if a[2] != 200]
    assert not failed, f"{len(failed)} failed requests of {len(clients.answers)}: {failed[:10]}"
    assert sum(1 for a in during if a[1] == "/api/accounts") >= 30
    versions = [a[3] for a in clients.answers if a[1] == "/health"]
    assert versions[0] == old_version and versions[-1] == new_version
    # Both instances run the new release, restarted one at a time: the second only after the
    # first was back (its /health, then nginx's fail_timeout).
    after = _main_pids(host, apis)
    assert all(after[unit] != before[unit] for unit in apis), (before, after)
    entered = [
        int(host.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {u}").stdout)
        for u in apis
    ]
    assert entered[1] - entered[0] >= 5_000_000  # microseconds


SLOW_JOB = """
import os, time
from rq import Queue
from redis import Redis
job = Queue("default", connection=Redis.from_url(os.environ["REDIS_URL"])).enqueue(
    "time.sleep", {seconds}, job_timeout=120
)
print(job.id)
"""

JOB_STATUS = """
import os
from rq.job import Job
from redis import Redis
job = Job.fetch("{job_id}", connection=Redis.from_url(os.environ["REDIS_URL"]))
status = job.get_status()
print(getattr(status, "value", status))
"""


def _job_status(host, job_id: str) -> str:
    result = host.run(DEPLOYED_PYTHON, input=JOB_STATUS.format(job_id=job_id))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_stopping_worker_finishes_its_job_first(deployed):
    host, seconds = deployed.host, 10
    workers = ["emailservice-worker@1.service", "emailservice-worker@2.service"]
    enqueued = host.run(DEPLOYED_PYTHON, input=SLOW_JOB.format(seconds=seconds))
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    deadline = time.monotonic() + 30
    while _job_status(host, job_id) != "started":
        assert time.monotonic() < deadline, "no worker took the job"
        time.sleep(0.2)
    started = time.monotonic()

    restarted = host.run(f"systemctl restart {' '.join(workers)}", timeout=300)
    took = time.monotonic() - started
    assert restarted.returncode == 0, restarted.stderr
    assert _job_status(host, job_id) == "finished"
    assert took >= seconds - 2, f"the workers stopped after {took:.1f} s, before the job ended"
    for unit in workers:
        assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active"
