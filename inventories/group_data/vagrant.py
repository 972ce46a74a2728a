"""The Vagrant box: self-signed TLS, a test mailbox."""

env = "vagrant"
mail_domain = "example.test"
mail_hostname = "mail.example.test"
tls_mode = "selfsigned"
mail_users = {"test@example.test": "MAILBOX_TEST_PASSWORD"}
api_instances = 2
worker_count = 2
