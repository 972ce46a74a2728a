"""Staging: certificates provided at the paths below (e.g. by certbot)."""

env = "staging"
mail_domain = "staging.example.com"
mail_hostname = "staging.example.com"
tls_mode = "provided"
tls_cert_path = "/etc/letsencrypt/live/staging.example.com/fullchain.pem"
tls_key_path = "/etc/letsencrypt/live/staging.example.com/privkey.pem"
api_instances = 2
worker_count = 2
