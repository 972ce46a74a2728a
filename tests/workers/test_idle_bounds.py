"""The real IDLE watcher (`emailservice idle`) against a peer that floods its IDLE: it stays
small, cuts the flood, and still stops at once when told."""

from __future__ import annotations

import os
import signal
import time

from app.config import Settings
from app.context import ServiceContext
from app.services.accounts import AccountFields, ServerFields, create_account
from app.states import Security
from tests.conftest import make_tenant_user
from tests.imap_peer import ImapPeer
from tests.support import Processes, allowing, descendants, wait_for

MIB = 1024 * 1024
PEAK_RSS_BOUND = 256 * MIB


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of `pid` and every process below it, summed, in bytes."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{each}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def test_the_idle_watcher_stays_small_and_responsive_under_a_flood(
    fresh_migrated_env, tmp_path, empty_queues
):
    with ImapPeer(mode="idle_flood") as peer:
        # Its own database: the watcher acts on every active account there is.
        settings = allowing(fresh_migrated_env, peer.pair)
        ctx = ServiceContext.build(Settings.from_mapping(settings))
        try:
            user = make_tenant_user(ctx)
            server = ServerFields("127.0.0.1", peer.port, Security.NONE, "alice", "secret")
            with ctx.work(user.tenant_id) as unit:
                fields = AccountFields("alice@peer.test", None, server, server)
                create_account(unit, fields, verify=False)
        finally:
            ctx.close()

        processes = Processes(settings, tmp_path)
        try:
            watcher = processes.start("idle")
            # The flood is read a bounded amount per wake-up, then taken for what it is.
            wait_for(lambda: peer.floods_ended >= 1, timeout=30, interval=0.2)
            peak = peak_rss(watcher.pid)
            assert 0 < peak <= PEAK_RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB"
            assert watcher.poll() is None  # the connection failed, not the watcher

            # Responsive: it stops promptly when told, flood or not.
            started = time.monotonic()
            os.killpg(watcher.pid, signal.SIGTERM)
            watcher.wait(timeout=20)
            assert time.monotonic() - started < 20
        finally:
            processes.stop_all()
        log = (tmp_path / "idle-0.log").read_text()
        assert "idle connection lost" in log and "response too long" in log
