"""Production. One host with every role (EMAILSERVICE_PRODUCTION_HOST, or mail.example.com), or,
with EMAILSERVICE_PRODUCTION_SPLIT=1, the split layout below: an app host (api + workers) and a
data/mail host (db + mail) on a private network (docs/deploy.md, "Scaling out"). Replace the
names and private addresses with yours; more app hosts are more entries in `api`/`workers`."""

import os

if os.environ.get("EMAILSERVICE_PRODUCTION_SPLIT") == "1":
    # The app host gets its ACME certificate for the API's own name (its DNS names this host);
    # the data/mail host has no nginx to answer ACME: put its certificate for mail_hostname at
    # tls_cert_path/tls_key_path ("provided").
    _app = (
        "app1.example.com",
        {"_sudo": True, "private_address": "10.0.0.11", "api_hostname": "api.example.com"},
    )
    _data = (
        "data1.example.com",
        {"_sudo": True, "private_address": "10.0.0.21", "tls_mode": "provided"},
    )
    production = [_app, _data]
    api = [_app[0]]
    workers = [_app[0]]
    db = [_data[0]]
    mail = [_data[0]]
else:
    production = [
        (os.environ.get("EMAILSERVICE_PRODUCTION_HOST", "mail.example.com"), {"_sudo": True})
    ]
