"""The backup tool of mailboxes, DKIM keys and certificate (templates/backup/files.j2) as the
deploy renders it, run on this machine against Maildirs made here (level 1 in docs/deploy.md;
the booted host's backup tests run it under systemd with Dovecot's real mailboxes): copies of
unchanged messages are hard links, renamed messages are found, restores add only what is missing
and never a UID list; the DKIM keys' archive is one that `emailservice-dkim restore` puts back;
every kind of backup is removed by the time in its name."""

from __future__ import annotations

import datetime
import importlib.machinery
import importlib.util
import os
import pwd
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks import backup as backup_task
from tests.deploy.inventory import group_data
from tests.deploy.test_dkim_templates import dkim_tool as load_dkim_tool
from tests.deploy.test_templates import render

ADDRESS = "ann@example.test"
DOMAIN = "example.test"


@pytest.fixture
def tool(tmp_path):
    """The rendered tool, with its mail root, DKIM key directory and certificate under tmp_path;
    (path, module)."""
    mail_root = tmp_path / "vmail"
    mail_root.mkdir()
    (tmp_path / "tls").mkdir()
    (tmp_path / "dkimkeys").mkdir(mode=0o700)
    text = render(
        "backup/files.j2",
        "vagrant",
        mail_root=str(mail_root),
        dkim_keys=str(tmp_path / "dkimkeys"),
        cert_path=str(tmp_path / "tls/cert.pem"),
        key_path=str(tmp_path / "tls/key.pem"),
    )
    path = tmp_path / "emailservice-files"
    path.write_text(text)
    path.chmod(0o755)
    loader = importlib.machinery.SourceFileLoader("emailservice_files", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    (tmp_path / "backups").mkdir(mode=0o700)
    return path, module


def run(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def maildir(root: Path, address: str = ADDRESS) -> Path:
    user, domain = address.split("@")
    home = root / domain / user / "Maildir"
    for folder in (home, home / ".Sent"):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    (home / "dovecot-uidlist").write_text("3 V1700000000 N3\n1 one\n2 two\n")
    (home / "dovecot.index.cache").write_bytes(b"\0" * 4096)
    (home / "subscriptions").write_text("Sent\n")
    (home / "tmp" / "half-written").write_text("partial")
    return home


def deliver(folder: Path, unique: str, body: str, where: str = "cur", flags: str = "") -> Path:
    name = f"{unique}:2,{flags}" if where == "cur" else unique
    path = folder / where / name
    path.write_bytes(f"Subject: {unique}\r\n\r\n{body}\r\n".encode())
    os.utime(path, (1_700_000_000, 1_700_000_000))  # Dovecot's received date
    return path


def snapshots(backups: Path) -> list[Path]:
    return sorted(backups.glob("mail-*"))


def test_a_second_backup_links_unchanged_messages_even_after_a_flag_change(tool, tmp_path):
    path, _ = tool
    root, backups = tmp_path / "vmail", tmp_path / "backups"
    home = maildir(root)
    seen = deliver(home, "1700000000.M1.host", "read later")
    deliver(home / ".Sent", "1700000001.M2.host", "sent one")
    deliver(home, "1700000002.M3.host", "fresh", where="new")
    first = run(path, "backup", str(backups), "14").stdout
    assert "3 messages copied" in first and "0 unchanged linked" in first
    (old,) = snapshots(backups)
    copied = old / "example.test/ann/Maildir"
    assert (copied / "dovecot-uidlist").exists() and (copied / "subscriptions").exists()
    # Index caches (rebuilt by Dovecot) and tmp/ (half-written files) are left out.
    assert not (copied / "dovecot.index.cache").exists()
    assert not (copied / "tmp").exists()
    assert (copied / "cur" / seen.name).stat().st_mtime == 1_700_000_000
    assert oct((copied / "cur" / seen.name).stat().st_mode & 0o777) == "0o600"

    # The user flags the first message (its file is renamed) and a new one arrives.
    flagged = seen.with_name(seen.name + "S")
    seen.rename(flagged)
    deliver(home, "1700000003.M4.host", "newer")
    os.rename(old, backups / "mail-20000101T000000Z")  # make the first one look older
    (old,) = snapshots(backups)
    first_copy = (old / "example.test/ann/Maildir/cur" / seen.name).stat().st_ino
    second = run(path, "backup", str(backups), "14").stdout
    assert "1 messages copied" in second and "3 unchanged linked" in second
    new = snapshots(backups)[-1] / "example.test/ann/Maildir"
    # The flagged message, under its new name, is the first copy's file: no second copy.
    assert (new / "cur" / flagged.name).stat().st_ino == first_copy
    assert (new / "cur" / "1700000003.M4.host:2,").read_bytes().endswith(b"newer\r\n")
    # The copy older than the kept days went once the new one was complete.
    assert "removed old backup" in second
    assert [p.name for p in snapshots(backups)] == [new.parents[2].name]


def test_two_backups_within_a_second_are_both_kept(tool, tmp_path, monkeypatch):
    _, module = tool
    backups = tmp_path / "backups"
    deliver(maildir(tmp_path / "vmail"), "1700000040.M1.host", "x")
    clock = iter(["20261207T000000Z"] * 3 + ["20261207T000001Z"])
    monkeypatch.setattr(module, "now_stamp", lambda: next(clock))
    module.backup_mail(str(backups), 14)
    module.backup_mail(str(backups), 14)  # in the same second: waits for the next
    first, second = snapshots(backups)
    assert (first / "example.test/ann/Maildir/cur").is_dir()
    assert (second / "example.test/ann/Maildir/cur").is_dir()


def test_a_message_renamed_while_it_is_copied_is_found_under_its_new_name(tool, tmp_path):
    _, module = tool
    root = tmp_path / "vmail"
    home = maildir(root)
    moving = deliver(home, "1700000005.M5.host", "moving", where="new")
    names = os.listdir(home / "new")  # listed ...
    moving.rename(home / "cur" / f"{moving.name}:2,S")  # ... then Dovecot moves it to cur/
    target = tmp_path / "snapshot"
    target.mkdir()
    run_ = module.Snapshot(root, target, None)
    rel = (home / "new").relative_to(root)
    (target / rel.parent).mkdir(parents=True)
    run_._messages(home / "new", rel, names)
    run_._messages(home / "cur", rel.parent / "cur", os.listdir(home / "cur"))
    copied = target / rel.parent
    assert [p.name for p in (copied / "cur").iterdir()] == [f"{moving.name}:2,S"]
    assert not (copied / "new").exists() or list((copied / "new").iterdir()) == []
    assert run_.copied == 1


def test_restore_puts_back_only_what_is_missing_and_no_uid_list(tool, tmp_path):
    path, _ = tool
    root, backups = tmp_path / "vmail", tmp_path / "backups"
    home = maildir(root)
    kept = deliver(home, "1700000010.M1.host", "kept")
    deliver(home, "1700000011.M2.host", "lost")
    deliver(home / ".Sent", "1700000012.M3.host", "lost too")
    run(path, "backup", str(backups), "14")
    (snapshot,) = snapshots(backups)
    os.chown(root, 12345, 12345)  # the mail root's owner (vmail on a host) owns what comes back

    # Lost: one message of INBOX and the whole Sent folder; kept: one message, since flagged.
    (home / "cur" / "1700000011.M2.host:2,").unlink()
    kept.rename(kept.with_name(kept.name + "F"))
    subprocess.run(["rm", "-rf", str(home / ".Sent")], check=True)
    (home / "dovecot-uidlist").write_text("3 V1700000000 N9\n")

    restored = run(path, "restore-mail", str(snapshot), ADDRESS).stdout
    assert f"{ADDRESS}: 2 messages put back" in restored
    assert sorted(p.name for p in (home / "cur").iterdir()) == [
        "1700000010.M1.host:2,F",  # not a second copy under its old name
        "1700000011.M2.host:2,",
    ]
    back = home / ".Sent" / "cur" / "1700000012.M3.host:2,"
    assert back.read_bytes().endswith(b"lost too\r\n")
    assert (back.stat().st_uid, back.stat().st_gid) == (12345, 12345)
    assert back.stat().st_mtime == 1_700_000_000
    assert (home / ".Sent" / "tmp").is_dir() and (home / ".Sent" / "new").is_dir()
    # The live UID list stays; the folder made again gets none (Dovecot starts a new one).
    assert (home / "dovecot-uidlist").read_text() == "3 V1700000000 N9\n"
    assert not (home / ".Sent" / "dovecot-uidlist").exists()

    again = run(path, "restore-mail", str(snapshot)).stdout
    assert f"{ADDRESS}: 0 messages put back" in again


def test_keep_uids_gives_back_the_uid_lists_of_folders_missing_here_only(tool, tmp_path):
    path, _ = tool
    root, backups = tmp_path / "vmail", tmp_path / "backups"
    home = maildir(root)
    deliver(home, "1700000030.M1.host", "in")
    deliver(home / ".Sent", "1700000031.M2.host", "out")
    (home / ".Sent" / "dovecot-uidlist").write_text("3 V1700000001 N2\n1 1700000031.M2.host\n")
    run(path, "backup", str(backups), "14")
    (snapshot,) = snapshots(backups)
    # A new host: INBOX exists already (a first delivery), Sent does not.
    subprocess.run(["rm", "-rf", str(home / ".Sent")], check=True)
    (home / "dovecot-uidlist").write_text("3 V1800000000 N1\n")
    out = run(path, "restore-mail", "--keep-uids", str(snapshot)).stdout
    assert "1 messages put back" in out and "1 folders kept their UIDs" in out
    assert (home / ".Sent" / "dovecot-uidlist").read_text().startswith("3 V1700000001 N2")
    assert (home / "dovecot-uidlist").read_text() == "3 V1800000000 N1\n"


def test_restore_names_what_it_cannot_use(tool, tmp_path):
    path, _ = tool
    root, backups = tmp_path / "vmail", tmp_path / "backups"
    deliver(maildir(root), "1700000020.M1.host", "x")
    run(path, "backup", str(backups), "14")
    (snapshot,) = snapshots(backups)
    wrong = run(path, "restore-mail", str(snapshot), "bob@example.test", check=False)
    assert wrong.returncode == 1
    assert "holds no mailbox bob@example.test (it holds: ann@example.test)" in wrong.stderr
    not_one = run(path, "restore-mail", str(tmp_path), check=False)
    assert not_one.returncode == 1 and "is not a mailbox backup" in not_one.stderr


def test_the_certificate_archive_holds_the_certificate_and_refuses_strangers(tool, tmp_path):
    path, _ = tool
    backups = tmp_path / "backups"
    (tmp_path / "tls/cert.pem").write_text("CERT")
    (tmp_path / "tls/key.pem").write_text("KEY")
    run(path, "backup", str(backups), "14")
    (archive,) = backups.glob("certificate-*.tar")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert sorted(names) == sorted(
        str(tmp_path / f"tls/{n}").lstrip("/") for n in ("cert.pem", "key.pem")
    )

    # An archive with anything else in it is refused before a file is written.
    hostile = tmp_path / "hostile.tar"
    with tarfile.open(hostile, "w") as tar:
        tar.add(tmp_path / "tls/cert.pem", arcname="etc/passwd")
    refused = run(path, "restore-certificate", str(hostile), check=False)
    assert refused.returncode == 1 and "unexpected entry etc/passwd" in refused.stderr
    assert (tmp_path / "tls/cert.pem").read_text() == "CERT"

    (tmp_path / "tls/cert.pem").write_text("OTHER")
    (tmp_path / "tls/key.pem").unlink()
    restored = run(path, "restore-certificate", str(archive)).stdout
    assert "restored the certificate" in restored
    assert (tmp_path / "tls/cert.pem").read_text() == "CERT"
    assert (tmp_path / "tls/key.pem").read_text() == "KEY"
    assert oct((tmp_path / "tls/key.pem").stat().st_mode & 0o777) == "0o640"


def dkim_tool(keys: Path) -> dict:
    """emailservice-dkim as the deploy renders it for the vagrant inventory, its keys in `keys`,
    loaded: its functions by name. The keys' owner is this test's user (no opendkim here), and
    OpenDKIM (not running here) is not reloaded."""
    namespace = load_dkim_tool("vagrant", str(keys))
    assert namespace["DOMAINS"] == [DOMAIN]
    namespace["OWNER"] = pwd.getpwuid(os.getuid()).pw_name
    namespace["reload_signer"] = lambda: None
    return namespace


def test_the_dkim_keys_archive_is_one_emailservice_dkim_restores(tool, tmp_path):
    path, _ = tool
    keys, backups = tmp_path / "dkimkeys", tmp_path / "backups"
    home = keys / DOMAIN
    home.mkdir(mode=0o700)
    (home / "s20261207.private").write_text("OLD KEY")
    (home / "s20261208.private").write_text("SIGNING KEY")
    (home / "active").write_text("s20261208\n")
    (keys / "key.table").write_text("made again from the keys")
    (keys / f".{DOMAIN}.restoring").mkdir()  # a restore's leftover: no domain

    out = run(path, "backup", str(backups), "14").stdout
    (archive,) = backups.glob("dkim-*.tar")
    assert f"backup {archive}: {home}" in out
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == [
        DOMAIN,
        *(f"{DOMAIN}/{n}" for n in ("active", "s20261207.private", "s20261208.private")),
    ]
    assert not list(backups.glob(".*"))  # no partial file left
    assert str(archive) in run(path, "list", str(backups)).stdout.split("\n")

    # Lost: every key of the domain; the archive puts them back, the same selector signing.
    subprocess.run(["rm", "-rf", str(home)], check=True)
    tool_ = dkim_tool(keys)
    tool_["cmd_restore"](SimpleNamespace(archive=str(archive)))
    assert (home / "s20261208.private").read_text() == "SIGNING KEY"
    assert (home / "s20261207.private").read_text() == "OLD KEY"
    assert tool_["active"](DOMAIN) == "s20261208"
    assert oct((home / "s20261208.private").stat().st_mode & 0o777) == "0o600"
    assert f"*@{DOMAIN} s20261208._domainkey.{DOMAIN}" in (keys / "signing.table").read_text()


def test_old_backups_of_every_kind_go_by_the_time_in_their_name(tool, tmp_path):
    path, _ = tool
    backups = tmp_path / "backups"
    deliver(maildir(tmp_path / "vmail"), "1700000050.M1.host", "x")
    (tmp_path / "dkimkeys" / DOMAIN).mkdir()
    (tmp_path / "dkimkeys" / DOMAIN / "active").write_text("s20261207\n")
    (tmp_path / "tls/cert.pem").write_text("CERT")
    (tmp_path / "tls/key.pem").write_text("KEY")
    now = datetime.datetime.now(datetime.timezone.utc)
    old, recent = [(now - datetime.timedelta(days=d)).strftime("%Y%m%dT%H%M%SZ") for d in (15, 13)]
    kinds = ("mail-{}", "dkim-{}.tar", "certificate-{}.tar")
    for kind in kinds:
        for stamp in (old, recent):
            made = backups / kind.format(stamp)
            if kind.startswith("mail"):
                made.mkdir()
            else:
                made.write_bytes(b"")
            os.utime(made, (0, 0))  # the file's own time does not count, the name's does

    out = run(path, "backup", str(backups), "14").stdout
    for kind in kinds:
        assert not (backups / kind.format(old)).exists(), kind
        assert f"removed old backup {backups / kind.format(old)}" in out
        assert (backups / kind.format(recent)).exists(), kind
        assert len(list(backups.glob(kind.format("*")))) == 2, kind  # the recent one and today's


@pytest.mark.parametrize("database", [True, False], ids=["db", "no-db"])
@pytest.mark.parametrize("mail", [True, False], ids=["mail", "no-mail"])
def test_the_backup_unit_runs_the_files_tool_once_whatever_the_roles(database, mail):
    """emailservice-files writes every backup but the dump (DKIM keys included): the unit runs
    it once, as root, after the dump; emailservice-dkim has no backup command."""
    data = group_data("vagrant")
    unit = render(
        "systemd/emailservice-backup.service.j2",
        "vagrant",
        database=database,
        mail=mail,
        files_tool=backup_task.FILES_TOOL,
    )
    started = [
        line.partition("=")[2] for line in unit.splitlines() if line.startswith("ExecStart=")
    ]
    files = f"+{backup_task.FILES_TOOL} backup {data['backup_dir']} {data['backup_keep_days']}"
    assert started == (["/usr/local/lib/emailservice/backup"] if database else []) + [files]
