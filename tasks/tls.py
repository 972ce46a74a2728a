"""A certificate per host: self-signed (generated once), provided files, or ACME (certbot).

ACME: `certificate()` first puts a self-signed placeholder at tls_cert_path/tls_key_path, so
nginx, Postfix and Dovecot start before there is a real certificate. Then `acme()` asks the CA
for one certificate naming the host's own names (api_hostname with the api role, mail_hostname
with the mail role) over HTTP-01 on port 80, which the firewall opens: on a host with nginx
(api role) through nginx (`certbot certonly --webroot`: the nginx plugin would rewrite
configuration this deploy owns); on a mail host without nginx, certbot answers it with its own
server (`--standalone`: nothing else listens on port 80 there, at issuance or at renewals).
certbot's deploy hook copies each new certificate over the placeholder and reloads the servers
of the host that use it; Debian's certbot.timer renews it twice a day when it is due, the same
way and with the same hook. The issuance runs once: a later deploy sees certbot's renewal
configuration and changes nothing.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.files import File
from pyinfra.operations import files, server, systemd

from tasks import roles
from tasks.common import template

CERT_NAME = "emailservice"
DEPLOY_HOOK = "/etc/emailservice/certbot-deploy-hook"
# Extra roots for a private ACME CA, where update-ca-certificates picks them up (Debian's
# certbot, through python3-requests, trusts the system's store; so does the service).
CA_BUNDLE = "/usr/local/share/ca-certificates/emailservice-acme.crt"


def api_hostname() -> str:
    return str(host.data.api_hostname or host.data.mail_hostname)


def acme_names() -> list[str]:
    """The names the ACME certificate is for: those the host's own servers answer at (with
    split roles another host's name would fail its challenge here)."""
    names = []
    if roles.has("api"):
        names.append(api_hostname())
    if roles.has("mail"):
        names.append(str(host.data.mail_hostname))
    return list(dict.fromkeys(names))


def reloaded_units() -> list[str]:
    """The servers of the host that read the certificate, reloaded by the deploy hook."""
    return (["nginx"] if roles.has("api") else []) + (
        ["postfix", "dovecot"] if roles.has("mail") else []
    )


def certificate() -> list:
    data = host.data
    if data.tls_mode not in ("selfsigned", "provided", "acme"):
        raise PyinfraError(f"tls_mode {data.tls_mode!r}: use selfsigned, provided or acme")
    if data.tls_mode == "provided":
        return []  # the operator keeps the files at tls_cert_path/tls_key_path
    if data.tls_mode == "acme" and not data.acme_email:
        raise PyinfraError("tls_mode 'acme' needs acme_email (the CA's contact address)")
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
    # names the host as the deploy reaches it, so clients can verify it there too. With ACME
    # it is the placeholder until the first certificate arrives.
    names = [
        f"DNS:{data.mail_hostname}",
        f"DNS:{api_hostname()}",
        "DNS:localhost",
        "IP:127.0.0.1",
        _san(host.name),
    ]
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


def acme() -> list:
    """Obtain the ACME certificate once and keep it renewed. Port 80 must reach the host (the
    firewall is configured first): nginx serves the challenge with the api role; otherwise
    (a mail host) certbot's standalone server does."""
    data = host.data
    if data.tls_mode != "acme":
        return []
    webroot = roles.has("api")
    ops = []
    if webroot:
        ops.append(
            files.directory(
                name="ACME challenge directory",
                path=f"{data.acme_webroot}/.well-known/acme-challenge",
                user="root",
                group="root",
                mode="755",
            )
        )
    ops.append(
        template(
            "certbot/deploy-hook.j2",
            DEPLOY_HOOK,
            mode="755",
            cert_path=data.tls_cert_path,
            key_path=data.tls_key_path,
            units=reloaded_units(),
        )
    )
    if data.acme_ca_bundle:
        bundle = files.put(
            name="Trust the ACME CA's roots", src=data.acme_ca_bundle, dest=CA_BUNDLE, mode="644"
        )
        ops += [bundle]
        ops.append(
            server.shell(
                name="Update the system's CA store",
                commands=["update-ca-certificates"],
                _if=bundle.did_change,
            )
        )
    ops.append(
        systemd.service(
            name="certbot.timer renews the certificate",
            service="certbot.timer",
            running=True,
            enabled=True,
        )
    )
    if host.get_fact(File, path=f"/etc/letsencrypt/renewal/{CERT_NAME}.conf") is None:
        domains = " ".join(f"-d {name}" for name in acme_names())
        # certbot keeps the method in the renewal configuration: renewals answer the same way.
        method = f"--webroot --webroot-path {data.acme_webroot}" if webroot else "--standalone"
        ops.append(
            server.shell(
                name=f"Obtain the certificate from {data.acme_server}",
                commands=[
                    f"certbot certonly --non-interactive --agree-tos {method} "
                    f"--cert-name {CERT_NAME} {domains} "
                    f"--server {data.acme_server} --email {data.acme_email} "
                    f"--deploy-hook {DEPLOY_HOOK}"
                ],
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
