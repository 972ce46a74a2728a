"""Production. One host with every role to start; split roles (api, workers, db, mail) come with
more hosts (see DEPLOYMENT.md when it lands). Put your host's name here (or in
EMAILSERVICE_PRODUCTION_HOST)."""

import os

production = [(os.environ.get("EMAILSERVICE_PRODUCTION_HOST", "mail.example.com"), {"_sudo": True})]
