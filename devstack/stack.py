"""The Stack: PostgreSQL, Redis, Dovecot and Postfix for one test run or dev session."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from devstack import dovecot, packages, paths, ports, postfix, postgres, redisdb, tls
from devstack.errors import StackError
from devstack.proc import pid_alive

log = logging.getLogger("devstack")

MAIL_DOMAIN = "example.test"
DEFAULT_USERS = ("alice", "bob", "carol")
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
SERVICES = ("postgres", "redis", "dovecot", "postfix")


@dataclass
class StackInfo:
    """Everything a client needs to use a running stack; written to `<state_dir>/stack.json`."""

    name: str
    state_dir: str
    persistent: bool = False
    host: str = "127.0.0.1"
    mail_domain: str = MAIL_DOMAIN
    # SQLAlchemy form (postgresql+psycopg://); the *_dsn twins are the libpq form for psycopg/psql.
    database_url: str = ""
    admin_database_url: str = ""
    database_dsn: str = ""
    admin_database_dsn: str = ""
    database_name: str = ""
    # "own": a cluster in the state dir; "reused": a database on DATABASE_URL's server.
    postgres_mode: str = ""
    postgres_port: int = 0
    redis_url: str = ""
    redis_db: int = 0
    # "own": a redis-server of the stack's own; "reused": a claimed db on REDIS_URL's server.
    redis_mode: str = ""
    redis_port: int = 0
    imap_port: int = 0
    imaps_port: int = 0
    lmtp_port: int = 0
    auth_port: int = 0  # Dovecot's SASL listener, used by Postfix
    smtp_port: int = 0
    submission_port: int = 0
    submissions_port: int = 0
    ca_file: str = ""
    key_file: str = ""
    log_dir: str = ""
    users: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    link: str = ""  # <root>/<name>, which is the state dir or a symlink to it
    # The process whose exit makes a throwaway stack an orphan that prune() may remove
    # (0: none, e.g. `python -m devstack up`: it lives until `down`).
    owner_pid: int = 0
    owner_host: str = ""
    # More lines for the env file (e.g. the dev stack's JWT_SECRET); see Stack.set_env().
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The environment variables the application reads (the lines of `<state_dir>/env`)."""
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url, **self.extra_env}

    @classmethod
    def from_dict(cls, data: Mapping) -> StackInfo:
        """Build from stack.json, ignoring keys that a newer or older version wrote."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Stack:
    """A set of real servers on 127.0.0.1 with free ports; see devstack/__init__.py for usage."""

    def __init__(
        self,
        name: str,
        root: Path | str = Path(".stack"),
        persistent: bool = False,
        *,
        dovecot_extra: str = "",
        environ: Mapping[str, str] | None = None,
        owner_pid: int | None = None,
    ) -> None:
        """`environ` (default os.environ) holds DATABASE_URL / REDIS_URL of servers to reuse;
        `owner_pid` (default: this process; 0: none) is the process a throwaway stack dies with."""
        self.name = paths.check_name(name)
        self.root = Path(root)
        self.persistent = persistent
        self.dovecot_extra = dovecot_extra
        self.environ = os.environ if environ is None else environ
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.info: StackInfo | None = None

    # -- public API -------------------------------------------------------------------------

    @staticmethod
    def load(name: str, root: Path | str = Path(".stack")) -> StackInfo | None:
        """The recorded state of a stack (running or not), or None when it has none."""
        state = paths.existing(name, Path(root))
        if state is None:
            return None
        try:
            return StackInfo.from_dict(json.loads((state / "stack.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def start(self) -> StackInfo:
        """Start what is not running (a persistent stack keeps its data); return how to reach it."""
        prune([self.root])
        with self._lock():
            previous = self.load(self.name, self.root)
            if previous is not None and previous.persistent and not self.persistent:
                raise StackError(
                    f"a persistent stack {self.name} exists in {previous.state_dir}; "
                    f"remove it first (python -m devstack down --name {self.name} --purge)"
                )
            if previous is not None and not self.persistent:
                log.info("removing the leftovers of an earlier stack %s", self.name)
                self._teardown(previous, purge=True)
                previous = None
            started: list[str] = []
            try:
                self.info = self._start(previous, started)
            except BaseException:
                if self.info is not None:
                    if self.persistent:
                        self._stop_services(self.info, started, purge=False)
                    else:
                        self._teardown(self.info, purge=True)
                    self.info = None
                raise
            return self.info

    def stop(self, purge: bool | None = None) -> None:
        """Stop every process; purge (default: when not persistent) also deletes the data."""
        with self._lock():
            info = self.info or self.load(self.name, self.root)
            if info is None:
                if purge:
                    paths.remove(paths.link_path(self.name, self.root))
                return
            self._teardown(info, purge=(not info.persistent) if purge is None else purge)
            self.info = None

    def stop_service(self, service: str) -> None:
        """Stop one mail server of this running stack (for tests of outages)."""
        if service not in ("postfix", "dovecot"):
            raise ValueError(f"only postfix or dovecot can be stopped alone, not {service}")
        with self._lock():
            errors = self._stop_services(self.info, [service], purge=False)
            self._save(self.info)
        if errors:
            raise StackError("; ".join(errors))

    def start_service(self, service: str) -> None:
        """Start a mail server stop_service() stopped, with the same ports and users."""
        with self._lock():
            state = Path(self.info.state_dir)
            if service == "postfix":
                self._start_postfix(self.info, state, [])
            elif service == "dovecot":
                self._start_dovecot(self.info, state, [])
            else:
                raise ValueError(f"only postfix or dovecot can be started alone, not {service}")
            self._save(self.info)

    def status(self) -> dict[str, bool]:
        """Which of the stack's servers are running (reused servers: whether they answer)."""
        info = self.info or self.load(self.name, self.root)
        if info is None:
            return {}
        state = Path(info.state_dir)
        result = {
            "postgres": postgres.cluster_pid(state / "pg" / "data") is not None
            if info.postgres_mode == "own"
            else postgres.answers(info.database_url),
            "redis": redisdb.server_pid(state / "redis" / "redis.pid") is not None
            if info.redis_mode == "own"
            else redisdb.answers(info.redis_url),
            "dovecot": dovecot.master_pid(state) is not None,
            "postfix": postfix.master_pid(state) is not None,
        }
        return result

    def add_user(self, email: str, password: str | None = None) -> str:
        """Create or update a mailbox user (any domain); return the password."""
        return self.add_users({email: password})[email.strip().lower()]

    def add_users(self, users: Mapping[str, str | None]) -> dict[str, str]:
        """Create or update several users at once (one reload); return email -> password."""
        added: dict[str, str] = {}
        for email, password in users.items():
            email = email.strip().lower()
            if not EMAIL_RE.match(email):
                raise ValueError(f"not an email address: {email!r}")
            password = password if password is not None else secrets.token_urlsafe(12)
            if "\n" in password or "\0" in password:
                raise ValueError("a password cannot contain newlines or NUL")
            added[email] = password
        with self._lock():
            info = self.info or self.load(self.name, self.root)
            if info is None:
                raise StackError(f"stack {self.name} has not been started")
            info.users.update(added)
            self._write_users(info, wait=True)
            postfix.reload(Path(info.state_dir))  # texthash maps are read once per Postfix process
            self._save(info)
            self.info = info
        return added

    def set_env(self, values: Mapping[str, str]) -> StackInfo:
        """Add lines to the stack's env file (kept across restarts of a persistent stack)."""
        with self._lock():
            info = self.info or self.load(self.name, self.root)
            if info is None:
                raise StackError(f"stack {self.name} has not been started")
            info.extra_env.update(values)
            self._save(info)
            self.info = info
        return info

    def flush_redis(self) -> None:
        """Empty the stack's Redis database, keeping its claim on a reused server."""
        info = self.info or self.load(self.name, self.root)
        if info is None:
            raise StackError(f"stack {self.name} has not been started")
        redisdb.flush_claimed(info.redis_url, info.redis_db)

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting ---------------------------------------------------------------------------

    def _start(self, previous: StackInfo | None, started: list[str]) -> StackInfo:
        began = time.monotonic()
        pg_mode, pg_admin = self._postgres_plan(previous)
        redis_mode, redis_server = self._redis_plan(previous)
        packages.ensure(postgres=pg_mode == "own", redis=redis_mode == "own")
        if os.geteuid() != 0:
            raise StackError(
                "devstack needs root: Postfix and Dovecot start as root and drop privileges"
            )

        state = paths.prepare(self.name, self.root)
        for sub in ("log", "dovecot", "postfix"):
            (state / sub).mkdir(exist_ok=True)
        info = previous or StackInfo(
            name=self.name, state_dir=str(state), persistent=self.persistent
        )
        info.state_dir, info.log_dir = str(state), str(state / "log")
        info.postgres_mode, info.redis_mode = pg_mode, redis_mode
        info.started_at = time.time()
        info.link = str(paths.link_path(self.name, self.root))
        info.owner_pid = 0 if self.persistent else self.owner_pid
        info.owner_host = socket.gethostname()
        self.info = info
        self._save(info)  # from here on, stop() can find and undo whatever gets started

        cert, key = tls.ensure_cert(state / "tls")
        info.ca_file, info.key_file = str(cert), str(key)
        info.users = self._users(state, info)
        self._write_users(info)
        self._allocate_ports(info, state)
        self._save(info)

        # PostgreSQL (initdb: about a second) starts beside the mail servers, which need each other.
        with ThreadPoolExecutor(max_workers=1) as pool:
            databases = pool.submit(
                self._start_databases, info, state, pg_admin, redis_server, started
            )
            try:
                self._start_dovecot(info, state, started)
                self._start_postfix(info, state, started)
            finally:
                databases_error = databases.exception()
        if databases_error is not None:
            raise databases_error
        self._save(info)
        log.info("stack %s up in %.1f s", self.name, time.monotonic() - began)
        return info

    def _postgres_plan(self, previous: StackInfo | None) -> tuple[str, str]:
        """("own", "") or ("reused", admin URL of the server named by DATABASE_URL)."""
        if previous is not None and previous.postgres_mode == "reused":
            if not postgres.answers(previous.admin_database_url):
                raise StackError(
                    "the PostgreSQL server this stack uses does not answer: "
                    + _safe(previous.admin_database_url)
                )
            return "reused", previous.admin_database_url
        if previous is not None and previous.postgres_mode == "own":
            return "own", ""
        url = self.environ.get("DATABASE_URL", "").strip()
        if url and postgres.is_postgres_url(url):
            if postgres.answers(url):
                return "reused", postgres.sqlalchemy_url(url)
            log.warning(
                "DATABASE_URL %s does not answer (or cannot create databases); "
                "starting a PostgreSQL of the stack's own",
                _safe(url),
            )
        return "own", ""

    def _redis_plan(self, previous: StackInfo | None) -> tuple[str, str]:
        """("own", "") or ("reused", URL of the server named by REDIS_URL)."""
        if previous is not None and previous.redis_mode == "reused":
            if not redisdb.answers(previous.redis_url):
                raise StackError(
                    f"the Redis server this stack uses does not answer: {_safe(previous.redis_url)}"
                )
            return "reused", previous.redis_url
        if previous is not None and previous.redis_mode == "own":
            return "own", ""
        url = self.environ.get("REDIS_URL", "").strip()
        if url.startswith(("redis://", "rediss://")):
            if redisdb.answers(url):
                return "reused", url
            log.warning(
                "REDIS_URL %s does not answer; starting a redis-server of the stack's own",
                _safe(url),
            )
        return "own", ""

    def _users(self, state: Path, info: StackInfo) -> dict[str, str]:
        """Keep a persistent stack's users and passwords; make fresh random ones otherwise."""
        users = dict(info.users)
        stored = state / "users.json"
        if self.persistent and not users and stored.is_file():
            users = json.loads(stored.read_text())
        for local in DEFAULT_USERS:
            users.setdefault(f"{local}@{MAIL_DOMAIN}", secrets.token_urlsafe(12))
        return users

    def _write_users(self, info: StackInfo, wait: bool = False) -> None:
        state = Path(info.state_dir)
        stored = state / "users.json"
        fd = os.open(stored.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info.users, fh, indent=2, sort_keys=True)
        os.replace(stored.with_suffix(".tmp"), stored)
        dovecot.write_users(state, info.users, wait=wait)
        postfix.write_maps(state, info.users)

    def _allocate_ports(self, info: StackInfo, state: Path) -> None:
        """Free ports for the servers not running; a persistent stack keeps its old ones if free."""
        running = self._running(info, state)
        wanted = []
        if info.postgres_mode == "own" and not running["postgres"]:
            wanted.append("postgres_port")
        if info.redis_mode == "own" and not running["redis"]:
            wanted.append("redis_port")
        if not running["dovecot"]:
            wanted += ["imap_port", "imaps_port", "lmtp_port", "auth_port"]
        if not running["postfix"]:
            wanted += ["smtp_port", "submission_port", "submissions_port"]
        chosen = ports.allocate(str(state), [getattr(info, attr) or None for attr in wanted])
        for attr, port in zip(wanted, chosen, strict=True):
            setattr(info, attr, port)

    @staticmethod
    def _running(info: StackInfo, state: Path) -> dict[str, bool]:
        return {
            "postgres": info.postgres_mode == "own"
            and postgres.cluster_pid(state / "pg" / "data") is not None,
            "redis": info.redis_mode == "own"
            and redisdb.server_pid(state / "redis" / "redis.pid") is not None,
            "dovecot": dovecot.master_pid(state) is not None,
            "postfix": postfix.master_pid(state) is not None,
        }

    def _start_databases(
        self, info: StackInfo, state: Path, pg_admin: str, redis_server: str, started: list[str]
    ) -> None:
        self._start_postgres(info, state, pg_admin, started)
        self._start_redis(info, state, redis_server, started)

    def _start_postgres(self, info: StackInfo, state: Path, admin: str, started: list[str]) -> None:
        if info.postgres_mode == "own":
            datadir = state / "pg" / "data"
            pid = postgres.cluster_pid(datadir)
            if pid is None:
                started.append("postgres")
                pid = postgres.start_cluster(
                    datadir,
                    info.postgres_port,
                    state / "log" / "postgres.log",
                    state / "pg" / "sock",
                )
            info.pids["postgres"] = pid
            admin = f"postgresql+psycopg://postgres@127.0.0.1:{info.postgres_port}/postgres"
        else:
            info.postgres_port = urlsplit(admin).port or 5432
        info.admin_database_url = admin
        info.admin_database_dsn = postgres.libpq_url(admin)
        if not info.database_name:
            info.database_name = self._database_name()
        self._save(info)  # record the name before creating it, so a failed start still drops it
        postgres.create_database(admin, info.database_name, if_missing=self.persistent)
        info.database_url = postgres.with_database(admin, info.database_name)
        info.database_dsn = postgres.libpq_url(info.database_url)

    def _database_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")[:40] or "stack"
        if self.persistent:
            return f"emailservice_{slug}"
        return f"es_{slug}_{secrets.token_hex(3)}"

    def _start_redis(self, info: StackInfo, state: Path, server: str, started: list[str]) -> None:
        if info.redis_mode == "own":
            directory = state / "redis"
            pid = redisdb.server_pid(directory / "redis.pid")
            if pid is None:
                started.append("redis")
                pid = redisdb.start_server(directory, info.redis_port, state / "log" / "redis.log")
            info.pids["redis"] = pid
            info.redis_db = 0
            info.redis_url = f"redis://127.0.0.1:{info.redis_port}/0"
            return
        owner = {
            "host": socket.gethostname(),
            "state_dir": str(state),
            "pid": os.getpid(),
            "persistent": self.persistent,
            "name": self.name,
        }
        info.redis_db = redisdb.claim_db(server, owner, prefer=info.redis_db or None)
        info.redis_url = redisdb.server_url(server, info.redis_db)
        info.redis_port = urlsplit(server).port or 6379

    def _start_dovecot(self, info: StackInfo, state: Path, started: list[str]) -> None:
        pid = dovecot.master_pid(state)
        if pid is None:
            started.append("dovecot")
            dv_ports = dovecot.DovecotPorts(
                info.imap_port, info.imaps_port, info.lmtp_port, info.auth_port
            )
            digest = hashlib.sha1(str(state).encode()).hexdigest()[:8]
            config = dovecot.config_text(
                dovecot.variables(
                    state=state,
                    instance=f"devstack-{self.name[:24]}-{digest}",
                    ports=dv_ports,
                    cert=Path(info.ca_file),
                    key=Path(info.key_file),
                    mail_domain=info.mail_domain,
                    extra=self.dovecot_extra,
                )
            )
            pid = dovecot.start(state, config, dv_ports, Path(info.ca_file))
        info.pids["dovecot"] = pid

    def _start_postfix(self, info: StackInfo, state: Path, started: list[str]) -> None:
        pid = postfix.master_pid(state)
        pf_ports = postfix.PostfixPorts(
            info.smtp_port,
            info.submission_port,
            info.submissions_port,
            info.lmtp_port,
            info.auth_port,
        )
        setup = (state, pf_ports, Path(info.ca_file), Path(info.key_file), info.users)
        if pid is None:
            started.append("postfix")
            pid = postfix.start(*setup, info.mail_domain)
        elif "dovecot" in started:
            # Dovecot came back, perhaps on other ports: point the running Postfix at them.
            postfix.configure(*setup, info.mail_domain)
            postfix.reload(state)
        info.pids["postfix"] = pid

    # -- stopping ---------------------------------------------------------------------------

    def _stop_services(
        self, info: StackInfo, which: list[str] | tuple[str, ...], *, purge: bool
    ) -> list[str]:
        """Stop the named servers (newest first); return the errors instead of raising."""
        state = Path(info.state_dir)
        errors: list[str] = []
        for service in ("postfix", "dovecot", "redis", "postgres"):
            if service not in which:
                continue
            try:
                if service == "postfix":
                    postfix.stop(state, abort=purge)
                elif service == "dovecot":
                    dovecot.stop(state)
                elif service == "redis" and info.redis_mode == "own":
                    redisdb.stop_server(state / "redis", info.redis_port, save=not purge)
                elif service == "postgres" and info.postgres_mode == "own":
                    postgres.stop_cluster(state / "pg" / "data", immediate=purge)
            except Exception as exc:  # keep going: stop as much as possible
                errors.append(f"{service}: {exc}")
            info.pids.pop(service, None)
        return errors

    def _teardown(self, info: StackInfo, *, purge: bool) -> None:
        """Stop everything; purge also drops the database, frees the Redis db, deletes the state."""
        errors = self._stop_services(info, SERVICES, purge=purge)
        if purge:
            if info.postgres_mode == "reused" and info.database_name and info.admin_database_url:
                try:
                    postgres.drop_database(info.admin_database_url, info.database_name)
                except Exception as exc:
                    errors.append(f"dropping database {info.database_name}: {exc}")
            if info.redis_mode == "reused" and info.redis_db and info.redis_url:
                try:
                    redisdb.release_db(info.redis_url, info.redis_db, info.state_dir)
                except Exception as exc:
                    errors.append(f"releasing Redis db {info.redis_db}: {exc}")
            ports.release(info.state_dir)
            paths.remove(Path(info.link) if info.link else paths.link_path(info.name, self.root))
            shutil.rmtree(info.state_dir, ignore_errors=True)
        elif Path(info.state_dir).is_dir():
            self._save(info)
        if errors:
            raise StackError(f"stopping stack {info.name}: " + "; ".join(errors))

    # -- files ------------------------------------------------------------------------------

    def _save(self, info: StackInfo) -> None:
        """Write stack.json and the dotenv file atomically (readers never see half a file)."""
        state = Path(info.state_dir)
        if not state.is_dir():
            return
        data = json.dumps(asdict(info), indent=2, sort_keys=True)
        env = f"# written by devstack for stack {info.name}\n" + "".join(
            f"{k}={v}\n" for k, v in info.env().items() if v
        )
        for filename, text in (("stack.json", data), ("env", env)):
            # Both hold credentials (user passwords, URLs): owner-only.
            fd, tmp = tempfile.mkstemp(dir=state, prefix=f".{filename}.")
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, state / filename)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise start/stop/add_user of one stack across processes (CLI and tests at once)."""
        digest = hashlib.sha1(str(paths.link_path(self.name, self.root)).encode()).hexdigest()[:12]
        # Lock files stay (deleting one that another process waits on would break the lock);
        # they are empty, and kept together in one directory.
        directory = Path(tempfile.gettempdir()) / "emailservice-devstack-locks"
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _safe(url: str) -> str:
    """A URL with its password masked, for messages."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def prune(roots: Iterable[Path | str] = ()) -> list[str]:
    """Remove throwaway stacks whose owner process died (a crashed or killed test run).

    Looks at the stacks under each root and in the relocation directory; persistent stacks and
    stacks without an owner (started by the CLI) are left alone. Returns the removed names.
    """
    candidates = set(paths.RELOCATED_BASE.glob("*/stack.json"))
    for root in roots:
        candidates |= set(Path(root).glob("*/stack.json"))
    removed = []
    for stack_json in sorted(candidates):
        try:
            info = StackInfo.from_dict(json.loads(stack_json.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        orphan = (
            not info.persistent
            and info.owner_pid
            and info.owner_host == socket.gethostname()
            and not pid_alive(info.owner_pid)
        )
        if not orphan or not info.link:
            continue
        link = Path(info.link)
        stack = Stack(info.name, link.parent, owner_pid=0)
        with stack._lock():
            if not stack_json.exists():
                continue  # another process pruned it meanwhile
            log.info("removing stack %s: its owner process %d is gone", info.name, info.owner_pid)
            try:
                stack._teardown(info, purge=True)
            except StackError as exc:
                log.warning("%s", exc)
            removed.append(info.name)
    return removed
