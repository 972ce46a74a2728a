"""PostgreSQL for a stack: a database on a reused server, or a throwaway cluster of its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devstack import packages
from devstack.errors import StackError, client_module
from devstack.proc import kill, read_pidfile, run, running_in, tail, wait_until

# A test server: durability buys nothing and costs seconds.
FAST_SETTINGS = """
# devstack: a throwaway test server
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
"""


def libpq_url(url: str) -> str:
    """The libpq form (postgresql://...) of a SQLAlchemy or libpq URL."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", *parts[1:]))


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form (postgresql+psycopg://...) of a libpq or SQLAlchemy URL."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def is_postgres_url(url: str) -> bool:
    """True for postgresql://, postgres:// and postgresql+psycopg:// URLs."""
    return urlsplit(url).scheme in ("postgresql", "postgres", "postgresql+psycopg")


def _connect(url: str, timeout: int = 3):  # -> psycopg.Connection
    psycopg = client_module("psycopg")
    return psycopg.connect(libpq_url(url), connect_timeout=timeout, autocommit=True)


def answers(url: str) -> bool:
    """True when the server in `url` accepts a connection and can create databases."""
    psycopg = client_module("psycopg")

    try:
        with _connect(url) as conn:
            row = conn.execute(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            return bool(row and row[0])
    except psycopg.Error:
        return False


def create_database(admin_url: str, name: str, *, if_missing: bool = False) -> bool:
    """CREATE DATABASE `name`; with if_missing, leave an existing one alone. True when created."""
    sql = client_module("psycopg.sql")
    with _connect(admin_url) as conn:
        if (
            if_missing
            and conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        ):
            return False
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(name)
            )
        )
    return True


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE `name`, ending connections that tests left open."""
    sql = client_module("psycopg.sql")
    with _connect(admin_url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_exists(admin_url: str, name: str) -> bool:
    """True when the server has a database called `name`."""
    with _connect(admin_url) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def _bindir() -> Path:
    bindir = packages.postgres_bindir()
    if bindir is None:
        raise StackError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return bindir


def cluster_pid(datadir: Path) -> int | None:
    """The postmaster pid of a running cluster in `datadir`, or None."""
    pid = read_pidfile(datadir / "postmaster.pid")
    return pid if running_in(pid, datadir) else None


def start_cluster(datadir: Path, port: int, logfile: Path, sockdir: Path) -> int:
    """initdb `datadir` when empty, start it on 127.0.0.1:port; return the postmaster pid."""
    bindir = _bindir()
    owner = "postgres" if os.geteuid() == 0 else None
    cwd = datadir.parent  # initdb and pg_ctl need a cwd the postgres user can read
    for path in (datadir, sockdir):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    logfile.touch(exist_ok=True)
    if owner:
        for path in (datadir, sockdir, logfile):
            shutil.chown(path, owner, owner)
    if not (datadir / "PG_VERSION").exists():
        initdb = [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]
        # C.UTF-8 is what the machine's server uses; plain C when a system lacks that locale.
        proc = run(initdb + ["--locale=C.UTF-8"], what="initdb", user=owner, cwd=cwd, check=False)
        if proc.returncode != 0:
            shutil.rmtree(datadir, ignore_errors=True)
            datadir.mkdir(mode=0o700)
            if owner:
                shutil.chown(datadir, owner, owner)
            run(initdb + ["--locale=C"], what="initdb", user=owner, cwd=cwd)
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write(FAST_SETTINGS)
    # Only called when cluster_pid() found no live postmaster of ours: a crash's leftover
    # postmaster.pid (its pid now a zombie or someone else's) would block the start.
    (datadir / "postmaster.pid").unlink(missing_ok=True)
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockdir}"
    proc = run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(logfile),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ],
        what="pg_ctl start",
        log=logfile.parent / "daemons.log",
        user=owner,
        cwd=cwd,
        check=False,
        timeout=90,
    )
    pid = cluster_pid(datadir)
    if proc.returncode != 0 or pid is None:
        raise StackError(
            f"PostgreSQL did not start on port {port}: {proc.stdout.strip()} {tail(logfile)}"
        )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    if not wait_until(lambda: answers(url), 15, 0.1):
        raise StackError(f"PostgreSQL on port {port} does not accept connections; {tail(logfile)}")
    return pid


def stop_cluster(datadir: Path, *, immediate: bool) -> None:
    """Stop the cluster in `datadir` (immediate: no shutdown checkpoint, for throwaway data)."""
    pid = cluster_pid(datadir)
    if pid is None:
        return
    owner = "postgres" if os.geteuid() == 0 else None
    run(
        [
            str(_bindir() / "pg_ctl"),
            "-D",
            str(datadir),
            "-m",
            "immediate" if immediate else "fast",
            "-w",
            "-t",
            "30",
            "stop",
        ],
        what="pg_ctl stop",
        user=owner,
        cwd=datadir.parent,
        check=False,
        timeout=60,
    )
    kill(pid)
