"""A certificate per host: self-signed, generated once (vagrant), or provided paths."""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import files, server


def certificate() -> list:
    data = host.data
    if data.tls_mode != "selfsigned":
        return []  # provided: certbot or the operator keeps the files at tls_cert_path/key_path
    ops = [
        files.directory(
            name="TLS directory",
            path=str(_parent(data.tls_cert_path)),
            user="root",
            group="root",
            mode="755",
        )
    ]
    # Generated once: a new certificate on every run would never report "no changes". It
    # names the host as the deploy reaches it, so clients can verify it there too.
    names = [f"DNS:{data.mail_hostname}", "DNS:localhost", "IP:127.0.0.1", _san(host.name)]
    if host.get_fact(File, path=data.tls_cert_path) is None:
        ops.append(
            server.shell(
                name="Generate a self-signed certificate",
                commands=[
                    "openssl req -x509 -newkey rsa:2048 -sha256 -days 3650 -nodes "
                    f"-subj '/CN={data.mail_hostname}' "
                    f"-addext 'subjectAltName={','.join(dict.fromkeys(names))}' "
                    f"-keyout {data.tls_key_path} -out {data.tls_cert_path}",
                    f"chmod 640 {data.tls_key_path}",
                ],
            )
        )
    # Dovecot and Postfix read the key as root; nginx too. The service reads the certificate
    # (to trust the host's own IMAP/SMTP when users connect accounts on it).
    ops.append(
        files.file(
            name="TLS key mode", path=data.tls_key_path, user="root", group="root", mode="640"
        )
    )
    ops.append(
        files.file(
            name="TLS cert mode", path=data.tls_cert_path, user="root", group="root", mode="644"
        )
    )
    return ops


def _san(name: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def _parent(path: str):
    from pathlib import PurePosixPath

    return PurePosixPath(path).parent
