"""The deploy fails loudly unless /health answers 200 through nginx."""

from __future__ import annotations

from pyinfra.operations import server
from pyinfra.operations.util import any_changed


def verify(ops: list) -> None:
    """Check /health, whenever anything of `ops` changed (a run that changed nothing skips it
    and reports no changes; the health-check timer watches the API all the time)."""
    server.shell(
        name="/health answers 200 through nginx",
        commands=[
            "for i in $(seq 60); do "
            "curl -fsS -k -m 5 -o /dev/null https://127.0.0.1/health && exit 0; sleep 1; done; "
            "echo '/health did not answer 200 within 60 s' >&2; "
            "journalctl -u 'emailservice-api@*' -n 30 --no-pager >&2; exit 1",
        ],
        _if=any_changed(*ops),
    )
