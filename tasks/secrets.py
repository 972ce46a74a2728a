"""Secrets: one set per environment, never printed, never on a command line.

Each value comes from the deploying person's environment (`EMAILSERVICE_<NAME>`) or from an
untracked, mode-0600 file beside the inventory (`inventories/secrets/<env>.env`), where a
missing one is generated once. Files holding secrets are written with `secret_file`, which,
unlike files.put/template, shows no diff and no contents, even with `--diff`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets as random
from pathlib import Path

from argon2.low_level import Type, hash_secret
from argon2.profiles import RFC_9106_LOW_MEMORY
from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations.util.files import chmod, chown

SECRETS_DIR = Path(__file__).resolve().parent.parent / "inventories" / "secrets"


def _generate(name: str) -> str:
    if name == "ENCRYPTION_KEY":  # the format the service expects: 32 bytes, URL-safe base64
        return base64.urlsafe_b64encode(random.token_bytes(32)).decode()
    return random.token_urlsafe(32)


def load(env: str, names: list[str]) -> dict[str, str]:
    """The environment's secrets: from EMAILSERVICE_<NAME>, else the file, else generated."""
    path = SECRETS_DIR / f"{env}.env"
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                stored[key.strip()] = value.strip()
    missing = [n for n in names if n not in stored and f"EMAILSERVICE_{n}" not in os.environ]
    if missing:
        stored.update({name: _generate(name) for name in missing})
        SECRETS_DIR.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# Secrets of the {env} environment: keep this file, never commit it.\n")
            f.writelines(f"{k}={v}\n" for k, v in sorted(stored.items()))
    return {n: os.environ.get(f"EMAILSERVICE_{n}", stored.get(n, "")) for n in names}


def dovecot_hash(email: str, password: str, realm: str = "") -> str:
    """{ARGON2ID} for Dovecot's passwd-file: Dovecot 2.4 (Debian 13) and 2.3 (Debian 12) verify it,
    with argon2-cffi's RFC 9106 low-memory profile (64 MiB, 3 passes), as the service hashes
    its own users' passwords.

    The salt is per user and per `realm` (the host's mail name), and stable, so a deploy with
    unchanged passwords rewrites nothing. It is not derived from the password: the {SSHA512}
    hashes this replaces carried SHA-256(address, password) in their salt, a fast hash of the
    password beside the slow one. Every user's hash is rewritten on the first deploy after
    the change (the deploy knows every password).
    """
    salt = hashlib.sha256(f"emailservice dovecot\0{realm}\0{email}".encode()).digest()[:16]
    profile = RFC_9106_LOW_MEMORY
    encoded = hash_secret(
        password.encode(),
        salt,
        time_cost=profile.time_cost,
        memory_cost=profile.memory_cost,
        parallelism=profile.parallelism,
        hash_len=profile.hash_len,
        type=Type.ID,
    )
    return "{ARGON2ID}" + encoded.decode()


@operation()
def secret_file(
    path: str, content: str, user: str = "root", group: str = "root", mode: str = "640"
):
    """Ensure a file holds `content` without ever showing it (no diff, no contents), and
    without a moment where another local user could open it.

    pyinfra's own upload goes through a temporary file named after the target (predictable)
    in /tmp, created with the default umask (readable by all), and the target itself is
    readable until the chmod: anyone who opens a file in that window keeps reading it after.
    So the bytes travel only through:
    - a directory made for this upload, mode 0700 from its mkdir, named at random, as the SSH
      user (who uploads over SFTP before sudo copies);
    - a staging file beside the target (whose directory only root writes), also named at
      random, created empty under `umask 077` (0600) before any byte is copied into it; it
      gets its owner and mode and then is renamed over the target, so the target's name never
      points at a file with other permissions, nor at a half-written one.
    """
    data = content.encode()
    current = host.get_fact(File, path=path)
    if host.get_fact(Sha256File, path=path) != hashlib.sha256(data).hexdigest():
        host.log(f"Will write {path} (contents hidden)")
        nonce = random.token_hex(16)
        private = f"{host.get_temp_filename(nonce)}.d"  # unpredictable: a hash of 128 random bits
        directory, _, name = path.rpartition("/")
        staged = f"{directory}/.{name}.{nonce}"
        yield StringCommand("mkdir", "-m", "700", QuoteString(private), _sudo=False)
        yield StringCommand("umask", "077", "&&", "touch", QuoteString(staged))
        yield FileUploadCommand(io.BytesIO(data), staged, remote_temp_filename=f"{private}/upload")
        yield StringCommand("rm", "-rf", QuoteString(private), _sudo=False)
        yield chown(staged, user, group)
        yield chmod(staged, mode)
        yield StringCommand("mv", "-f", QuoteString(staged), QuoteString(path))
        return
    if not current or current.get("user") != user or current.get("group") != group:
        yield chown(path, user, group)
    if not current or f"{current.get('mode')}" != mode.lstrip("0"):
        yield chmod(path, mode)


def scram_sha256(role: str, password: str) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677), salted per role
    and password, so it is stable across deploys and `ALTER ROLE ... PASSWORD` gets the verifier,
    never the password itself."""
    import hmac

    iterations = 4096
    salt = hashlib.sha256(f"emailservice scram\0{role}\0{password}".encode()).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )
