"""Defaults for every environment; each environment's file overrides what differs.

Templates read only `host.data`. Secrets are not here: they come from the deploying person's
environment or an untracked file (tasks/secrets.py).
"""

# The environment's name: picks the secrets file inventories/secrets/<env>.env.
env = "default"

# Mail
mail_domain = "example.test"
mail_hostname = "mail.example.test"
# Mailboxes on this host's Dovecot: address -> name of the secret holding its password.
mail_users = {}
# Maildirs, owned by the vmail user (not under /var/mail, whose setgid bit directories inherit).
mail_root = "/var/vmail"
# Where mail for some domains goes instead of their MX (Postfix's transport map):
# domain -> "smtp:[host]:port", e.g. a smarthost for one domain. Empty: every domain by its MX.
mail_transports = {}

# DKIM (tasks/dkim.py): OpenDKIM signs the mail leaving through Postfix for mail_domain and these
# other domains, with a key per domain made once on the mail host (rotation: docs/deploy.md).
dkim_extra_domains = []
dkim_key_bits = 2048
# DNS records printed by `sudo emailservice-dns` (or `make dns ENV=...`): the DMARC policy
# ({domain} is replaced), and the mail host's public addresses for its A/AAAA records (empty:
# the addresses of its interfaces).
dmarc_record = "v=DMARC1; p=quarantine"
public_addresses = []

# TLS: "selfsigned" (generated once on the host), "provided" (the operator keeps the files at
# the paths below) or "acme" (certbot obtains the certificate for the host's names,
# api_hostname with the api role and mail_hostname with the mail role, over HTTP-01 on port
# 80: through nginx, or with certbot's own server on a mail host without nginx; renews it, and
# reloads the host's nginx, Postfix and Dovecot; a self-signed placeholder is served until the
# first issuance).
tls_mode = "selfsigned"
tls_cert_path = "/etc/emailservice/tls/cert.pem"
tls_key_path = "/etc/emailservice/tls/key.pem"
# The name the API is reached at (nginx); empty: mail_hostname.
api_hostname = ""
# ACME (tls_mode "acme"): the CA's directory URL, the account's contact address (required),
# and, for a private ACME CA, a PEM file on the deploying machine with the roots the host must
# trust (the ACME server's TLS certificate and the CA that issues): installed system-wide.
acme_server = "https://acme-v02.api.letsencrypt.org/directory"
acme_email = ""
acme_ca_bundle = ""
acme_webroot = "/var/www/emailservice-acme"  # nginx (www-data) reads it: outside state_dir
# Packages of a TLS mode, on hosts with the api or mail role.
tls_packages = {"acme": ["certbot"]}

# The service
app_user = "emailservice"
app_root = "/opt/emailservice"
state_dir = "/var/lib/emailservice"
config_dir = "/etc/emailservice"
api_instances = 2
api_base_port = 8001
waitress_threads = 8
worker_count = 2
# nginx stops sending requests to an instance that failed 3 times for this long; a rolling
# restart waits as long after each instance is back before restarting the next.
api_fail_timeout_seconds = 5
log_level = "INFO"
sync_interval_seconds = 300
# Who may read /metrics (through nginx): add your Prometheus server's address.
metrics_allow = ["127.0.0.1", "::1"]
# Longer than the longest job (a sync job's budget is minutes; the job timeout is 900 s), so a
# stopping worker finishes its job.
worker_stop_timeout_seconds = 960

# PostgreSQL: the app connects over the Unix socket with peer authentication (no password).
postgres_database = "emailservice"

# Backups (hosts with the db role): `pg_dump -Fc` on a systemd timer into backup_dir
# (postgres:postgres 0700), dumps older than backup_keep_days removed after a good new one.
backup_dir = "/var/backups/emailservice"
backup_keep_days = 14
backup_on_calendar = "*-*-* 03:30:00"

# Redis
redis_maxmemory = "256mb"

# Firewall: the only ports open to the world: SSH on every host, those of the host's roles
# (tasks/roles.py), and 80 with tls_mode "acme" (the CA's HTTP-01 check, on a mail host too).
# PostgreSQL and Redis are open only to the app hosts, with split roles.
ssh_port = 22
role_tcp_ports = {"api": [80, 443], "mail": [25, 465, 587, 143, 993]}

# Debian packages: every host gets `packages`, plus those of its roles.
packages = ["python3", "openssl", "nftables", "ca-certificates", "curl"]
role_packages = {
    "api": ["nginx", "python3-venv"],
    "workers": ["python3-venv"],
    "db": ["postgresql", "redis-server"],
    "mail": ["postfix", "dovecot-imapd", "dovecot-lmtpd", "opendkim", "opendkim-tools"],
}

# nginx's own limit on POST /auth/login per client address, in front of the API's (which
# counts per address and per user): a flood is refused before it costs an API thread.
nginx_login_rate_per_minute = 30
nginx_login_burst = 10

# Resource limits of the service's units (systemd): a runaway process meets its own unit's
# limit, not the kernel's OOM killer choosing among the host's processes. The API: Waitress
# threads, request bodies up to 2 x MAX_MESSAGE_BYTES, at most 2 password hashes of 64 MiB at
# once. A worker unit holds the worker and its work-horse. The IDLE watcher runs a thread and
# a connection per active account: size its tasks and files for the accounts you host.
unit_limits = {
    "api": {"memory_max": "1G", "tasks_max": 64, "nofile": 4096},
    "worker": {"memory_max": "1G", "tasks_max": 32, "nofile": 4096},
    "scheduler": {"memory_max": "256M", "tasks_max": 16, "nofile": 1024},
    "idle": {"memory_max": "2G", "tasks_max": 4096, "nofile": 16384},
    "migrate": {"memory_max": "512M", "tasks_max": 16, "nofile": 1024},
}
