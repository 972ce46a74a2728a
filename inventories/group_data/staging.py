"""Staging: certificates from Let's Encrypt (ACME), renewed on the host."""

env = "staging"
mail_domain = "staging.example.com"
mail_hostname = "staging.example.com"
tls_mode = "acme"
acme_email = "postmaster@staging.example.com"
api_instances = 2
worker_count = 2
