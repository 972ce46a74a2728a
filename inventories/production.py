"""Production. One host with every role (EMAILSERVICE_PRODUCTION_HOST, or mail.example.com), or,
with EMAILSERVICE_PRODUCTION_SPLIT=1, the split layout below: an app host (api + workers) and a
data/mail host (db + mail) on a private network (docs/deploy.md, "Scaling out"). Replace the
names and private addresses with yours; more app hosts are more entries in `api`/`workers`."""

import os

if os.environ.get("EMAILSERVICE_PRODUCTION_SPLIT") == "1":
    # Each host gets its own ACME certificate for the names it serves (DNS names each one):
    # the app host for the API's name (answered through nginx), the data/mail host for
    # mail_hostname (answered by certbot itself on port 80: it has no nginx).
    _app = (
        "app1.example.com",
        {"_sudo": True, "private_address": "10.0.0.11", "api_hostname": "api.example.com"},
    )
    _data = ("data1.example.com", {"_sudo": True, "private_address": "10.0.0.21"})
    production = [_app, _data]
    api = [_app[0]]
    workers = [_app[0]]
    db = [_data[0]]
    mail = [_data[0]]
else:
    production = [
        (os.environ.get("EMAILSERVICE_PRODUCTION_HOST", "mail.example.com"), {"_sudo": True})
    ]
