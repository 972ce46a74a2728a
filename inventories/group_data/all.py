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

# TLS: "selfsigned" (generated once on the host) or "provided" (paths below).
tls_mode = "selfsigned"
tls_cert_path = "/etc/emailservice/tls/cert.pem"
tls_key_path = "/etc/emailservice/tls/key.pem"

# The service
app_user = "emailservice"
app_root = "/opt/emailservice"
state_dir = "/var/lib/emailservice"
config_dir = "/etc/emailservice"
api_instances = 2
api_base_port = 8001
waitress_threads = 8
worker_count = 2
log_level = "INFO"
sync_interval_seconds = 300
# Longer than the longest job (a sync job's budget is minutes; the job timeout is 900 s), so a
# stopping worker finishes its job.
worker_stop_timeout_seconds = 960

# PostgreSQL: the app connects over the Unix socket with peer authentication (no password).
postgres_database = "emailservice"

# Redis
redis_maxmemory = "256mb"

# Firewall: the only ports open to the world.
public_tcp_ports = [22, 25, 80, 443, 465, 587, 143, 993]

# Debian packages of a host with every role.
packages = [
    "postgresql",
    "redis-server",
    "postfix",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "nginx",
    "python3",
    "python3-venv",
    "openssl",
    "nftables",
    "ca-certificates",
    "curl",
]
