"""Production: certificates from Let's Encrypt (ACME), renewed on the host."""

env = "production"
mail_domain = "example.com"
mail_hostname = "mail.example.com"
tls_mode = "acme"
acme_email = "postmaster@example.com"
api_instances = 4
worker_count = 4
