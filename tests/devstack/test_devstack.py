"""Tests of the local stack itself: real PostgreSQL, Redis, Dovecot and Postfix on loopback.

The module-scoped `stack` fixture runs every test twice: once with servers of the stack's own,
once reusing the machine's shared PostgreSQL and Redis (skipped where those do not answer).
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import os
import secrets
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
import redis

from devstack import Stack, StackError, StackInfo, paths, postgres, prune, redisdb

pytestmark = pytest.mark.slow

SHARED = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}
PROJECT = Path(__file__).resolve().parents[2]


def shared_servers_answer() -> bool:
    """True when the machine's shared PostgreSQL and Redis are there to be reused."""
    try:
        return postgres.answers(SHARED["DATABASE_URL"]) and redisdb.answers(SHARED["REDIS_URL"])
    except StackError:
        return False


def env_for(mode: str) -> dict[str, str]:
    """The environment a stack reads: the shared servers' URLs for "reused", nothing for "own"."""
    if mode == "reused":
        if not shared_servers_answer():
            pytest.skip("the shared PostgreSQL/Redis on 5432/6379 do not answer here")
        return dict(SHARED)
    return {}


@pytest.fixture(scope="module", params=["own", "reused"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One throwaway stack per mode for the whole module (tmp dirs are 0700: state is relocated)."""
    root = tmp_path_factory.mktemp("stacks")
    st = Stack(f"t-{request.param}-{secrets.token_hex(2)}", root, environ=env_for(request.param))
    info = st.start()
    yield st, info
    st.stop()


@pytest.fixture
def info(stack) -> StackInfo:
    return stack[1]


def tls_context(info: StackInfo) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=info.ca_file)


def imap_login(info: StackInfo, user: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(info.host, info.imap_port)
    conn.login(user, info.users[user])
    return conn


def wait_for_subject(
    info: StackInfo, user: str, subject: str, timeout: float = 10
) -> email.message.EmailMessage:
    """Poll `user`'s INBOX over IMAP until a message with `subject` is there; return it."""
    deadline = time.monotonic() + timeout
    while True:
        conn = imap_login(info, user)
        try:
            conn.select("INBOX", readonly=True)
            _, data = conn.search(None, "ALL")
            for num in reversed(data[0].split()):
                _, parts = conn.fetch(num, "(RFC822)")
                msg = email.message_from_bytes(parts[0][1], policy=email.policy.default)
                if msg["Subject"] == subject:
                    return msg
        finally:
            conn.logout()
        if time.monotonic() > deadline:
            raise AssertionError(f"no message {subject!r} in {user}'s INBOX after {timeout} s")
        time.sleep(0.2)


def message(sender: str, to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(f"{subject}\nbody with ünïcödé\n")
    return msg


# -- info, PostgreSQL, Redis ---------------------------------------------------------------


def test_info_is_recorded_and_loadable(stack) -> None:
    st, info = stack
    loaded = Stack.load(st.name, st.root)
    assert loaded == info
    assert (
        json.loads((Path(info.state_dir) / "stack.json").read_text())["database_url"]
        == info.database_url
    )
    env = (Path(info.state_dir) / "env").read_text()
    assert f"DATABASE_URL={info.database_url}\n" in env and f"REDIS_URL={info.redis_url}\n" in env
    assert info.database_url.startswith("postgresql+psycopg://") and info.database_dsn.startswith(
        "postgresql://"
    )
    assert set(info.users) >= {"alice@example.test", "bob@example.test", "carol@example.test"}
    assert len(set(info.users.values())) == len(info.users)
    assert info.mail_domain == "example.test" and info.host == "127.0.0.1"
    assert oct(os.stat(Path(info.state_dir) / "users.json").st_mode & 0o777) == "0o600"
    # pytest's tmp dirs are private (0700): the state lives in a world-traversable place instead.
    if not paths.traversable(st.root):
        assert Path(info.state_dir).is_relative_to(paths.RELOCATED_BASE)
    assert paths.link_path(st.name, st.root).resolve() == Path(info.state_dir)


def test_postgres_roundtrip(info: StackInfo) -> None:
    with psycopg.connect(info.database_dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == info.database_name
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes (body) VALUES (%s)", ("grüße",))
        assert conn.execute("SELECT body FROM notes").fetchall() == [("grüße",)]
    with psycopg.connect(info.admin_database_dsn, autocommit=True) as admin:
        extra = f"{info.database_name}_extra"
        admin.execute(f'CREATE DATABASE "{extra}"')
        admin.execute(f'DROP DATABASE "{extra}"')


def test_redis_roundtrip(info: StackInfo) -> None:
    client = redis.Redis.from_url(info.redis_url)
    client.set("devstack:test", "42")
    assert client.get("devstack:test") == b"42"
    assert client.connection_pool.connection_kwargs["db"] == info.redis_db
    if info.redis_mode == "reused":
        assert info.redis_db != 0
        claim = json.loads(client.get(redisdb.CLAIM_KEY))
        assert claim["state_dir"] == info.state_dir
        db0 = redis.Redis.from_url(SHARED["REDIS_URL"])
        assert db0.connection_pool.connection_kwargs["db"] == 0
        assert db0.get(redisdb.CLAIM_KEY) is None  # nothing of ours in the shared db 0
    else:
        assert info.redis_db == 0 and info.redis_port != 6379


# -- configuration ---------------------------------------------------------------------------


def test_mail_configs_pass_the_checks_a_host_runs_before_a_restart(info: StackInfo) -> None:
    """The stack renders the deploy's templates; what tasks/postfix.py and tasks/dovecot.py
    check on a host before restarting (no error, no warning) holds for the stack's variant too."""
    state = Path(info.state_dir)

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    for result in (
        run("postfix", "-c", str(state / "postfix" / "etc"), "check"),
        run("postconf", "-c", str(state / "postfix" / "etc")),
        run("doveconf", "-c", str(state / "dovecot" / "dovecot.conf"), "-n"),
    ):
        assert result.returncode == 0, result.args
        assert "warning" not in result.stderr.lower(), (result.args, result.stderr)


# -- IMAP ------------------------------------------------------------------------------------


def test_imap_plain_login_lists_special_use_folders(info: StackInfo) -> None:
    conn = imap_login(info, "alice@example.test")
    try:
        assert "STARTTLS" in conn.capabilities
        _, lines = conn.list()
        listing = b"\n".join(lines).decode()
        for flag, name in (
            ("Sent", "Sent"),
            ("Drafts", "Drafts"),
            ("Trash", "Trash"),
            ("Junk", "Junk"),
            ("Archive", "Archive"),
        ):
            assert f"\\{flag}" in listing and f'"{name}"' in listing or f" {name}" in listing
        _, subscribed = conn.lsub()
        assert len(subscribed) >= 5
        _, caps = conn.capability()
        assert b"CONDSTORE" in caps[0] and b"QRESYNC" in caps[0]
    finally:
        conn.logout()


def test_imaps_and_starttls_verify_the_stack_certificate(info: StackInfo) -> None:
    conn = imaplib.IMAP4_SSL(info.host, info.imaps_port, ssl_context=tls_context(info))
    assert conn.login("bob@example.test", info.users["bob@example.test"])[0] == "OK"
    conn.logout()
    conn = imaplib.IMAP4(info.host, info.imap_port)
    conn.starttls(ssl_context=tls_context(info))
    assert conn.login("bob@example.test", info.users["bob@example.test"])[0] == "OK"
    conn.logout()
    # Without the stack's CA the certificate is refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(info.host, info.imaps_port, ssl_context=ssl.create_default_context())


def test_wrong_password_fails_fast_and_does_not_slow_later_logins(info: StackInfo) -> None:
    for _ in range(3):
        started = time.monotonic()
        conn = imaplib.IMAP4(info.host, info.imap_port)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login("alice@example.test", "not-the-password")
        conn.logout()
        assert time.monotonic() - started < 2
    started = time.monotonic()
    imap_login(info, "alice@example.test").logout()
    assert time.monotonic() - started < 1


# -- mail flow -------------------------------------------------------------------------------


def test_submission_starttls_auth_send_and_read_back(info: StackInfo) -> None:
    subject = f"Grüße aus Köln ✉ {secrets.token_hex(3)}"
    with smtplib.SMTP(info.host, info.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(info))
        smtp.login("alice@example.test", info.users["alice@example.test"])
        smtp.send_message(message("alice@example.test", "bob@example.test", subject))
    msg = wait_for_subject(info, "bob@example.test", subject)
    assert msg["From"] == "alice@example.test"
    assert "ünïcödé" in msg.get_content()


def test_submissions_implicit_tls_send(info: StackInfo) -> None:
    subject = f"via submissions {secrets.token_hex(3)}"
    with smtplib.SMTP_SSL(
        info.host, info.submissions_port, context=tls_context(info), timeout=10
    ) as smtp:
        smtp.login("carol@example.test", info.users["carol@example.test"])
        smtp.send_message(message("carol@example.test", "bob@example.test", subject))
    wait_for_subject(info, "bob@example.test", subject)


def test_submission_refuses_auth_before_starttls(info: StackInfo) -> None:
    with smtplib.SMTP(info.host, info.submission_port, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
        assert code >= 500
        code, _ = smtp.docmd("MAIL", "FROM:<alice@example.test>")
        assert code >= 500  # TLS is required before anything else


def test_submission_refuses_to_send_without_login(info: StackInfo) -> None:
    with smtplib.SMTP(info.host, info.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(info))
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("alice@example.test", ["bob@example.test"], "Subject: x\r\n\r\nx\r\n")
    assert refused.value.recipients["bob@example.test"][0] == 554


def test_mx_port_refuses_relay_with_554(info: StackInfo) -> None:
    with smtplib.SMTP(info.host, info.smtp_port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail(
                "spammer@outside.test", ["victim@elsewhere.test"], "Subject: x\r\n\r\nx\r\n"
            )
    code, text = refused.value.recipients["victim@elsewhere.test"]
    assert code == 554 and b"Relay access denied" in text


def test_mx_port_refuses_unknown_local_user(info: StackInfo) -> None:
    with smtplib.SMTP(info.host, info.smtp_port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail(
                "someone@outside.test", ["nobody@example.test"], "Subject: x\r\n\r\nx\r\n"
            )
    assert refused.value.recipients["nobody@example.test"][0] == 550


def test_sender_login_mismatch_refused(info: StackInfo) -> None:
    with smtplib.SMTP(info.host, info.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(info))
        smtp.login("alice@example.test", info.users["alice@example.test"])
        # Sender checks wait for RCPT (smtpd_delay_reject), as on a deployed host.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail(
                "bob@example.test", ["carol@example.test"], "Subject: forged\r\n\r\nx\r\n"
            )
    code, text = refused.value.recipients["carol@example.test"]
    assert code == 553 and b"not owned by user alice@example.test" in text


def test_mail_from_outside_is_delivered(info: StackInfo) -> None:
    subject = f"from the internet {secrets.token_hex(3)}"
    with smtplib.SMTP(info.host, info.smtp_port, timeout=10) as smtp:
        smtp.send_message(message("friend@outside.test", "bob@example.test", subject))
    assert wait_for_subject(info, "bob@example.test", subject)["From"] == "friend@outside.test"


def test_mail_to_other_domains_bounces_at_once(info: StackInfo) -> None:
    subject = f"to the outside {secrets.token_hex(3)}"
    with smtplib.SMTP(info.host, info.submission_port, timeout=10) as smtp:
        smtp.starttls(context=tls_context(info))
        smtp.login("carol@example.test", info.users["carol@example.test"])
        smtp.send_message(message("carol@example.test", "someone@elsewhere.test", subject))
    deadline = time.monotonic() + 10
    while True:
        conn = imap_login(info, "carol@example.test")
        conn.select("INBOX", readonly=True)
        _, found = conn.search(None, "FROM", "MAILER-DAEMON")
        conn.logout()
        if found[0]:
            break
        assert time.monotonic() < deadline, "no bounce for mail to another domain"
        time.sleep(0.2)


def test_add_user_on_the_running_stack(stack) -> None:
    st, info = stack
    password = st.add_user("dave@other.test", "pass:with:colons")
    assert password == "pass:with:colons" and st.info is not None
    assert Stack.load(st.name, st.root).users["dave@other.test"] == password
    conn = imaplib.IMAP4(info.host, info.imap_port)
    assert conn.login("dave@other.test", password)[0] == "OK"
    conn.logout()
    subject = f"welcome dave {secrets.token_hex(3)}"
    with smtplib.SMTP(info.host, info.smtp_port, timeout=10) as smtp:
        smtp.send_message(message("friend@outside.test", "dave@other.test", subject))
    wait_for_subject(st.info, "dave@other.test", subject)


def test_set_env_adds_lines_to_the_env_file(stack) -> None:
    st, info = stack
    st.set_env({"DEVSTACK_TEST_SETTING": "on"})
    assert "DEVSTACK_TEST_SETTING=on\n" in (Path(info.state_dir) / "env").read_text()
    assert Stack.load(st.name, st.root).env()["DEVSTACK_TEST_SETTING"] == "on"


def test_flush_redis_keeps_the_claim(stack) -> None:
    st, info = stack
    client = redis.Redis.from_url(info.redis_url)
    client.set("devstack:flush-me", "1")
    st.flush_redis()
    assert client.get("devstack:flush-me") is None
    if info.redis_mode == "reused":
        assert client.get(redisdb.CLAIM_KEY) is not None


# -- several stacks, stopping, failures ----------------------------------------------------


def test_second_stack_does_not_collide_and_stop_cleans_up(stack, tmp_path: Path) -> None:
    first_stack, first = stack
    mode = first.postgres_mode
    second_stack = Stack("second", tmp_path, environ=env_for(mode))
    second = second_stack.start()
    try:
        ports = [
            "imap_port",
            "imaps_port",
            "lmtp_port",
            "auth_port",
            "smtp_port",
            "submission_port",
            "submissions_port",
        ]
        if mode == "own":
            ports += ["postgres_port", "redis_port"]
        assert not {getattr(first, p) for p in ports} & {getattr(second, p) for p in ports}
        assert first.state_dir != second.state_dir
        assert first.database_url != second.database_url
        assert first.redis_url != second.redis_url
        assert first.users["alice@example.test"] != second.users["alice@example.test"]
        imap_login(second, "alice@example.test").logout()
        imap_login(first, "alice@example.test").logout()
    finally:
        second_stack.stop()
    assert not Path(second.state_dir).exists()
    assert not paths.link_path("second", tmp_path).exists()
    assert Stack.load("second", tmp_path) is None
    second_stack.stop()  # a second stop is harmless
    if mode == "reused":
        assert not postgres.database_exists(first.admin_database_url, second.database_name)
        client = redis.Redis.from_url(second.redis_url)
        assert client.get(redisdb.CLAIM_KEY) is None and client.dbsize() == 0
    for pid in second.pids.values():
        assert (
            not os.path.exists(f"/proc/{pid}")
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        )
    # The first stack is untouched.
    imap_login(first, "bob@example.test").logout()


def test_failed_start_stops_what_it_started(tmp_path: Path) -> None:
    environ = dict(SHARED) if shared_servers_answer() else {}
    name = f"broken-{secrets.token_hex(3)}"  # unique: other test runs may break stacks too
    broken = Stack(name, tmp_path, dovecot_extra="this_is_not_a_setting = 1\n", environ=environ)
    with pytest.raises(StackError, match="Dovecot"):
        broken.start()
    assert Stack.load(name, tmp_path) is None
    assert not paths.link_path(name, tmp_path).exists()
    if environ:
        with psycopg.connect(SHARED["DATABASE_URL"]) as conn:
            left = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (f"es_{name.replace('-', '_')}_%",),
            ).fetchall()
        assert left == []


def crash_a_stack(name: str, root: Path, environ: dict[str, str]) -> StackInfo:
    """Start a throwaway stack in a child process that exits without stopping it."""
    code = (
        "import json, os, sys; from pathlib import Path; from devstack import Stack\n"
        "Stack(sys.argv[1], Path(sys.argv[2]), environ=json.loads(sys.argv[3])).start()\n"
        "os._exit(0)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, name, str(root), json.dumps(environ)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    info = Stack.load(name, root)
    assert info is not None and info.owner_pid and info.pids
    return info


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_stacks_of_a_crashed_run_are_pruned(tmp_path: Path) -> None:
    environ = dict(SHARED) if shared_servers_answer() else {}
    orphan = crash_a_stack("orphan", tmp_path, environ)
    assert all(alive(pid) for pid in orphan.pids.values())  # the servers outlived their run
    assert "orphan" in prune([tmp_path])
    assert Stack.load("orphan", tmp_path) is None and not Path(orphan.state_dir).exists()
    assert not any(alive(pid) for pid in orphan.pids.values())
    if orphan.postgres_mode == "reused":
        assert not postgres.database_exists(orphan.admin_database_url, orphan.database_name)
        assert redis.Redis.from_url(orphan.redis_url).get(redisdb.CLAIM_KEY) is None

    # A new stack of the same name as a crashed one starts cleanly in its place.
    stale = crash_a_stack("again", tmp_path, environ)
    fresh_stack = Stack("again", tmp_path, environ=environ)
    fresh = fresh_stack.start()
    try:
        assert not any(alive(pid) for pid in stale.pids.values())
        assert fresh.users != stale.users and fresh.database_name != stale.database_name
        imap_login(fresh, "alice@example.test").logout()
    finally:
        fresh_stack.stop()


def test_cli_persistent_stack_keeps_data_across_down_and_up(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        return subprocess.run(
            [sys.executable, "-m", "devstack", *args, "--name", "dev", "--root", str(tmp_path)],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    up = cli("up", "--persistent")
    assert up.returncode == 0, up.stderr
    assert "alice@example.test" in up.stdout
    try:
        first = Stack.load("dev", tmp_path)
        assert first is not None and first.persistent
        env = cli("env")
        assert (
            env.returncode == 0
            and env.stdout == f"DATABASE_URL={first.database_url}\nREDIS_URL={first.redis_url}\n"
        )
        assert cli("status").returncode == 0
        assert cli("up", "--persistent").returncode == 0  # idempotent while running
        assert Stack.load("dev", tmp_path).pids == first.pids
        # A crashed Dovecot is started again by `up`, and Postfix follows it.
        os.kill(first.pids["dovecot"], signal.SIGKILL)
        assert cli("up", "--persistent").returncode == 0
        revived = Stack.load("dev", tmp_path)
        assert revived.pids["dovecot"] != first.pids["dovecot"]
        assert revived.pids["postfix"] == first.pids["postfix"]
        assert cli("status").returncode == 0
        first = revived
        with psycopg.connect(first.database_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        redis.Redis.from_url(first.redis_url).set("kept", "yes")
        subject = f"kept {secrets.token_hex(3)}"
        with smtplib.SMTP(first.host, first.smtp_port, timeout=10) as smtp:
            smtp.send_message(message("friend@outside.test", "alice@example.test", subject))
        wait_for_subject(first, "alice@example.test", subject)

        down = cli("down")
        assert down.returncode == 0, down.stderr
        assert Path(first.state_dir).is_dir()
        status = cli("status")
        assert status.returncode == 1 and "dovecot=NO" in status.stdout

        again = cli("up", "--persistent")
        assert again.returncode == 0, again.stderr
        second = Stack.load("dev", tmp_path)
        assert second.users == first.users and second.database_name == first.database_name
        with psycopg.connect(second.database_dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(7,)]
        assert redis.Redis.from_url(second.redis_url).get("kept") == b"yes"
        wait_for_subject(second, "alice@example.test", subject, timeout=2)
    finally:
        purge = cli("down", "--purge")
    assert purge.returncode == 0, purge.stderr
    assert Stack.load("dev", tmp_path) is None and not Path(first.state_dir).exists()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack",
            "env",
            "--name",
            "nothing-here",
            "--root",
            str(tmp_path),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "devstack", "up", "--name", "bad/name", "--root", str(tmp_path)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        bad.returncode == 1
        and len(bad.stderr.strip().splitlines()) == 1
        and "Traceback" not in bad.stderr
    )


def test_state_dir_relocation_when_root_is_private(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    state = paths.prepare("reloc", private / ".stack")
    try:
        assert state.is_relative_to(paths.RELOCATED_BASE) and paths.traversable(state)
        assert (private / ".stack" / "reloc").is_symlink()
        assert paths.prepare("reloc", private / ".stack") == state  # found again, not moved
    finally:
        paths.remove(paths.link_path("reloc", private / ".stack"))
    assert not state.exists() and not (private / ".stack" / "reloc").exists()


def test_packages_present_means_no_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack import packages

    assert packages.missing() == []
    monkeypatch.setattr(
        packages, "_apt_install", lambda pkgs: pytest.fail(f"apt called for {pkgs}")
    )
    packages.ensure()


def test_packages_missing_without_root_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from devstack import packages

    monkeypatch.setattr(packages, "missing", lambda **kinds: ["postfix", "dovecot-imapd"])
    monkeypatch.setattr(packages.os, "geteuid", lambda: 1000)
    with pytest.raises(StackError) as raised:
        packages.ensure()
    assert "sudo apt-get install -y --no-install-recommends postfix dovecot-imapd" in str(
        raised.value
    )


def test_a_stale_pid_file_does_not_name_another_process(tmp_path: Path) -> None:
    from devstack import dovecot, postfix

    run_dir = tmp_path / "dovecot" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "master.pid").write_text(f"{os.getpid()}\n")  # alive, but not a Dovecot of ours
    assert dovecot.master_pid(tmp_path) is None
    (tmp_path / "postfix" / "spool" / "pid").mkdir(parents=True)
    (tmp_path / "postfix" / "spool" / "pid" / "master.pid").write_text(f"{os.getpid():>16}\n")
    assert postfix.master_pid(tmp_path) is None
