"""Production: certificates provided at the paths below (e.g. by certbot)."""

env = "production"
mail_domain = "example.com"
mail_hostname = "mail.example.com"
tls_mode = "provided"
tls_cert_path = "/etc/letsencrypt/live/mail.example.com/fullchain.pem"
tls_key_path = "/etc/letsencrypt/live/mail.example.com/privkey.pem"
api_instances = 4
worker_count = 4
