"""nginx: TLS in front of the API instances, which listen on localhost only."""

from __future__ import annotations

from pyinfra.operations import files, server, systemd

from tasks import debian
from tasks.common import changed, template


def configure(api_ports: list[int]) -> list:
    site = template(
        "nginx/emailservice.conf.j2",
        "/etc/nginx/sites-available/emailservice",
        api_ports=api_ports,
        http2_directive=debian.release().nginx_http2_directive,
    )
    enabled = files.link(
        name="Enable the site",
        path="/etc/nginx/sites-enabled/emailservice",
        target="/etc/nginx/sites-available/emailservice",
    )
    default = files.link(
        name="Disable Debian's default site",
        path="/etc/nginx/sites-enabled/default",
        present=False,
    )
    ops = [site, enabled, default]
    reload = changed(*ops)
    if reload:
        ops.append(server.shell(name="nginx configuration is valid", commands=["nginx -t -q"]))
    ops.append(
        systemd.service(
            name="nginx running", service="nginx", running=True, enabled=True, reloaded=reload
        )
    )
    return ops
