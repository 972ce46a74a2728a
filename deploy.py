"""The emailservice deploy: `pyinfra inventories/<env>.py deploy.py` (or `make deploy ENV=...`).

Turns a fresh Debian 12 host into the whole stack: PostgreSQL, Redis, Dovecot, Postfix, TLS,
the service (API instances, workers, scheduler, IDLE watcher) under systemd, nginx in front,
a firewall and a health-check timer, then checks /health through nginx. A second run changes
nothing. Settings come from inventories/group_data/ (templates read only host.data); secrets
from the deploying person's environment or inventories/secrets/ (tasks/secrets.py).
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from tasks import (
    app,
    base,
    dovecot,
    firewall,
    health,
    nginx,
    postfix,
    postgres,
    redis,
    release,
    tls,
)
from tasks import secrets as secret_store

if host.data.get("env", "default") == "default":
    raise PyinfraError("no environment: deploy with an inventory of inventories/ (vagrant, ...)")

secrets = secret_store.load(
    host.data.env,
    ["JWT_SECRET", "ENCRYPTION_KEY", "REDIS_PASSWORD", *host.data.mail_users.values()],
)
ops = [
    *base.install_packages(),
    *tls.certificate(),
    *postgres.configure(),
    *redis.configure(secrets["REDIS_PASSWORD"]),
    *dovecot.configure(secrets),
    *postfix.configure(),
    *app.install(release.build(), secrets),
    *nginx.configure(app.api_ports()),
    *firewall.configure(),
]
health.verify(ops)
