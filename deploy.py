"""The emailservice deploy: `pyinfra inventories/<env>.py deploy.py` (or `make deploy ENV=...`).

Turns fresh Debian 13 or 12 hosts into the whole stack, configured for each host's release
(tasks/debian.py): PostgreSQL and Redis (db role), Dovecot and Postfix (mail), the service's
API instances behind nginx (api), its workers, scheduler and IDLE watcher (workers), TLS
(self-signed, provided or ACME), backups of what each host keeps (tasks/backup.py), a firewall
and a health-check timer, then checks /health through nginx. A host in no role group has every
role (tasks/roles.py). A second run changes nothing. Settings come from inventories/group_data/
(templates read only host.data); secrets from the deploying person's environment or
inventories/secrets/ (tasks/secrets.py).
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from tasks import (
    app,
    backup,
    base,
    dkim,
    dovecot,
    firewall,
    health,
    nginx,
    postfix,
    postgres,
    redis,
    release,
    roles,
    tls,
)
from tasks import secrets as secret_store

if host.data.get("env", "default") == "default":
    raise PyinfraError("no environment: deploy with an inventory of inventories/ (vagrant, ...)")

split = roles.split()
names = ["JWT_SECRET", "ENCRYPTION_KEY", "REDIS_PASSWORD", *host.data.mail_users.values()]
secrets = secret_store.load(host.data.env, names + (["DATABASE_PASSWORD"] if split else []))

ops = [*base.install_packages()]
if roles.has("api", "mail"):
    ops += tls.certificate()
if roles.has("db"):
    ops += postgres.configure(secrets["DATABASE_PASSWORD"] if split else None)
    ops += redis.configure(secrets["REDIS_PASSWORD"], private=split)
if roles.has("mail"):
    ops += dovecot.configure(secrets)
    ops += dkim.configure()
    ops += postfix.configure()
if roles.has("db", "mail", "api"):
    ops += backup.configure()  # what each role keeps: the database, mailboxes, certificate
if roles.has(*roles.APP):
    ops += app.install(release.build(), secrets)
if roles.has("api"):
    ops += nginx.configure(app.api_ports())
ops += firewall.configure(roles.remote_app_addresses() if split and roles.has("db") else [])
if roles.has("api", "mail"):
    # After the firewall: the CA's HTTP-01 check must reach port 80 (nginx, or certbot's own
    # server on a mail host without nginx).
    ops += tls.acme()
if roles.has("api"):
    health.verify(ops)
