"""Every read from an IMAP server is bounded: hostile peers of the tests' own (tests/imap_peer.py)
and the stack's real Dovecot, through app.mail.imap's transport (no mocks)."""

from __future__ import annotations

import logging
import time

import pytest

from app.mail import MailConnectionError, ServerSettings
from app.mail import imap as imap_module
from app.mail.imap import BatchAbandoned, ImapLimits, ImapSession, check_login, connect
from app.states import Security
from tests.imap_peer import ImapPeer, message
from tests.mailbox import mailbox_of

KIB = 1024


def peer_server(peer: ImapPeer) -> ServerSettings:
    return ServerSettings("127.0.0.1", peer.port, Security.NONE, "alice", "secret")


def limits(**changes) -> ImapLimits:
    values = dict(command_timeout=3, max_message_bytes=64 * KIB)
    values.update(changes)
    return ImapLimits(**values)


def test_a_server_that_never_greets_times_out_within_the_command_timeout():
    with ImapPeer(mode="silent") as peer:
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="timed out"):
            connect(peer_server(peer), limits=limits(command_timeout=2))
        assert time.monotonic() - started < 2 + 3


def test_a_dripping_server_cannot_extend_the_deadline_of_a_command():
    # One byte every second: each recv would succeed well within any per-read timeout.
    with ImapPeer(mode="drip", drip_seconds=1) as peer:
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="timed out"):
            connect(peer_server(peer), limits=limits(command_timeout=3))
        elapsed = time.monotonic() - started
        assert 2.5 < elapsed < 3 + 3


def test_an_absolute_deadline_ends_a_login_earlier_than_the_command_timeout():
    with ImapPeer(mode="drip", drip_seconds=1) as peer:
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="timed out"):
            check_login(
                peer_server(peer),
                limits=limits(command_timeout=60),
                deadline=time.monotonic() + 2,
            )
        assert time.monotonic() - started < 2 + 3


def test_a_line_over_the_bound_drops_the_connection():
    with ImapPeer(mode="long_line", long_line_bytes=4 * 1024 * 1024) as peer:
        with pytest.raises(MailConnectionError, match="response too long"):
            connect(peer_server(peer), limits=limits(max_line_bytes=64 * KIB))


def test_a_body_literal_above_the_limit_is_refused_before_it_is_read():
    inbox = {1: message("small one"), 2: message("the liar"), 3: message("small two")}
    with ImapPeer(folders={"INBOX": inbox}, huge={2: 500}) as peer:
        session = ImapSession.open(peer_server(peer), limits=limits())
        try:
            session.examine("INBOX")
            assert session.sizes([1, 2, 3])[2] == 500  # the lie
            with pytest.raises(BatchAbandoned) as caught:
                session.fetch([1, 2, 3])
            # What came whole before the literal is kept; the rest is left to fetch again.
            assert [m.uid for m in caught.value.received] == [1]
            assert caught.value.remaining == [2, 3]
            # Nothing like the announced gigabyte was read: the connection was dropped at once.
            assert peer.literal_bytes_sent < 64 * 1024 * 1024
            session.reconnect()
            [headers] = session.fetch_headers([2])
            assert headers.too_large and b"Subject: the liar" in headers.raw
            assert [m.uid for m in session.fetch([3])] == [3]
        finally:
            session.close()


def test_a_batch_is_cut_when_its_bodies_outgrow_its_bytes():
    # Each body is under MAX_MESSAGE_BYTES, but together they pass what the batch may hold.
    inbox = {uid: message(f"m{uid}", size=40 * KIB) for uid in range(1, 6)}
    with ImapPeer(folders={"INBOX": inbox}) as peer:
        session = ImapSession.open(peer_server(peer), limits=limits())
        try:
            session.examine("INBOX")
            with pytest.raises(BatchAbandoned) as caught:
                session.fetch([1, 2, 3, 4, 5], max_bytes=100 * KIB)
            received = caught.value.received
            assert sum(len(m.raw) for m in received) <= 100 * KIB + 64 * KIB
            assert {m.uid for m in received} | set(caught.value.remaining) == {1, 2, 3, 4, 5}
        finally:
            session.close()


def test_folders_over_the_limit_are_skipped_and_counted_inbox_kept():
    folders = {f"F{n:02}": {} for n in range(30)}
    folders["INBOX"] = {}  # listed last
    with ImapPeer(folders=folders) as peer:
        with ImapSession.open(peer_server(peer), limits=limits(max_folders=5)) as session:
            found = session.folders()
            assert len(found) == 5
            assert found[0].name == "INBOX"
            assert session.folders_skipped == 26


def test_an_endless_list_ends_at_a_count_not_at_memory_exhaustion():
    with ImapPeer(mode="endless_list") as peer:
        session = ImapSession.open(
            peer_server(peer), limits=limits(max_folders=10, command_timeout=60)
        )
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="response too long"):
            session.folders()
        # Ended by the entry count, long before the command's 60 s.
        assert time.monotonic() - started < 30
        session.close()


def test_idle_wait_returns_after_a_bounded_read_under_a_flood():
    with ImapPeer(mode="idle_flood") as peer:
        session = ImapSession.open(peer_server(peer), limits=limits(idle_max_responses=200))
        flood = imap_module.IDLE_FLOOD_FACTOR * 200
        try:
            session.idle_start("INBOX")
            with pytest.raises(MailConnectionError, match="response too long"):
                # However fast the flood comes, every wake-up comes back at once keeping
                # nothing, until the IDLE has brought more than a flood's worth: then it is cut.
                for _ in range(flood + 1):
                    started = time.monotonic()
                    session.idle_wait(5)
                    assert time.monotonic() - started < 2
                    assert not session.transport.untagged_responses
            assert flood < session._idle_responses <= flood + 200
        finally:
            session.close()
        deadline = time.monotonic() + 5
        while not peer.floods_ended and time.monotonic() < deadline:
            time.sleep(0.1)
        assert peer.floods_ended == 1


def test_done_unanswered_under_a_flood_is_bounded_too():
    with ImapPeer(mode="idle_flood") as peer:
        session = ImapSession.open(peer_server(peer), limits=limits(idle_max_responses=200))
        try:
            session.idle_start("INBOX")
            assert session.idle_wait(5)
            with pytest.raises(MailConnectionError, match="response too long"):
                session.idle_stop()
        finally:
            session.close()


def test_a_large_folder_is_searched_in_ranges_without_esearch(
    stack_control, user_pools, monkeypatch, caplog
):
    from tests.mailbox import UserPool

    mailbox = user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()
    uids = set(mailbox.fill("INBOX", 12))
    server = ServerSettings(
        mailbox.host, mailbox.imap_port, Security.NONE, mailbox.email, mailbox.password
    )
    monkeypatch.setattr(imap_module, "SEARCH_SPAN", 5)
    with ImapSession.open(server, limits=limits()) as session:
        session.esearch = False  # as a server without RFC 4731
        session.examine("INBOX")
        with caplog.at_level(logging.DEBUG, logger="imapclient.imaplib"):
            assert session.uids() == uids
        answers = [r for r in caplog.records if r.getMessage().startswith("< b'* SEARCH")]
        assert len(answers) == 3  # messages 1:5, 6:10 and 11:*


def test_esearch_answers_the_same_uids_as_search(stack_control, user_pools):
    from tests.mailbox import UserPool

    mailbox = user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()
    uids = mailbox.fill("INBOX", 7)
    server = ServerSettings(
        mailbox.host, mailbox.imap_port, Security.NONE, mailbox.email, mailbox.password
    )
    with ImapSession.open(server, limits=limits()) as session:
        assert session.esearch  # Dovecot has ESEARCH
        session.examine("INBOX")
        assert session.uids() == set(uids)
        assert session.uids(from_uid=uids[3]) == set(uids[3:])


def test_tls_is_verified_against_the_host_name_when_connecting_to_an_address(stack):
    """The host policy resolves a name once and hands over the address: the connection goes
    there, and TLS still checks the certificate against the name."""
    mailbox = mailbox_of(stack, "alice@example.test")

    def server(host: str) -> ServerSettings:
        return ServerSettings(
            host, stack.imaps_port, Security.SSL, mailbox.email, mailbox.password, stack.host
        )

    # "localhost" is in the certificate; the .invalid name resolves nowhere and is not.
    check_login(server("localhost"), stack.ca_file, limits())
    with pytest.raises(MailConnectionError, match="(?i)certificate|tls"):
        check_login(server("imap.example.invalid"), stack.ca_file, limits())


def test_a_legitimate_huge_folder_is_listed_under_the_default_line_bound():
    # 300 000 UIDs in one SEARCH line would be about 2 MiB, twice IMAP_MAX_LINE_BYTES.
    count = 300_000
    raw = message("one of many")
    with ImapPeer(folders={"INBOX": dict.fromkeys(range(1, count + 1), raw)}) as peer:
        with ImapSession.open(peer_server(peer), limits=ImapLimits()) as session:
            assert not session.esearch
            assert session.examine("INBOX").messages == count
            assert session.uids() == set(range(1, count + 1))
            assert session.uids(from_uid=count - 9) == set(range(count - 9, count + 1))
            assert session.sizes([1, count]) == {1: len(raw), count: len(raw)}
    searches = [c for c in peer.commands if c == "UID SEARCH"]
    assert len(searches) >= count // imap_module.SEARCH_SPAN


def test_esearch_claiming_more_uids_than_the_folder_holds_is_refused():
    inbox = {1: message("one"), 2: message("two")}
    with ImapPeer(folders={"INBOX": inbox}, esearch=True, esearch_answer="1:4294967295") as peer:
        session = ImapSession.open(peer_server(peer), limits=limits())
        try:
            assert session.esearch
            session.examine("INBOX")
            started = time.monotonic()
            with pytest.raises(MailConnectionError, match="response too long"):
                session.uids()
            assert time.monotonic() - started < 2  # refused, not expanded
        finally:
            session.close()


def test_esearch_of_the_peer_answers_like_search():
    inbox = {uid: message(f"m{uid}") for uid in (3, 4, 5, 9)}
    with ImapPeer(folders={"INBOX": inbox}, esearch=True) as peer:
        with ImapSession.open(peer_server(peer), limits=limits()) as session:
            session.examine("INBOX")
            assert session.uids() == {3, 4, 5, 9}
            assert session.uids(from_uid=5) == {5, 9}


def test_a_response_piling_literals_under_the_cap_is_cut_at_one_body():
    # Each literal is under MAX_MESSAGE_BYTES; a hundred of them in one response are not.
    inbox = {1: message("piled", size=40 * KIB), 2: message("after")}
    with ImapPeer(folders={"INBOX": inbox}, pile=100) as peer:
        session = ImapSession.open(peer_server(peer), limits=limits(max_line_bytes=16 * KIB))
        try:
            session.examine("INBOX")
            with pytest.raises(BatchAbandoned) as caught:
                session.fetch([1, 2])
            assert caught.value.received == [] and caught.value.remaining == [1, 2]
        finally:
            session.close()
