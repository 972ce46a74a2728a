"""DKIM's configuration as the deploy renders it (level 1 in docs/deploy.md): mail from the
submission ports and pickup goes through the signing hop, which forces the 7-bit conversion
before OpenDKIM signs; OpenDKIM and the hop listen on loopback; the devstack signs nothing; the
key tool is valid Python with the inventory's domains."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from devstack import postfix as devstack_postfix
from tasks import dkim
from tasks import postfix as postfix_task
from tests.deploy.inventory import group_data
from tests.deploy.test_templates import ENVIRONMENTS, postfix_render, render, settings

SIGN = f"content_filter=dkim-sign:[127.0.0.1]:{dkim.SIGNING_PORT}"


def _service(master: str, name: str) -> str:
    """One master.cf service entry with its -o lines."""
    match = re.search(rf"^{re.escape(name)}\s.*?(?=^\S)", master + "\nEND", re.M | re.S)
    assert match, f"no {name} service"
    return match.group(0)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_submitted_and_local_mail_is_signed_after_the_7bit_conversion(env):
    master = postfix_render("postfix/master.cf.j2", env)
    for name in ("submission", "submissions", "pickup"):
        assert SIGN in _service(master, name), name
    # Mail arriving on 25 is not signed (it is not ours to sign).
    assert "content_filter" not in _service(master, "smtp")
    signer = _service(master, f"127.0.0.1:{dkim.SIGNING_PORT}")
    assert f"smtpd_milters=inet:127.0.0.1:{dkim.MILTER_PORT}" in signer
    # Neither 8BITMIME nor SMTPUTF8 (which makes Postfix assume 8BITMIME): the conversion to
    # 7 bits happens on the way into the signer, never after the signature.
    assert "smtpd_discard_ehlo_keywords=8bitmime,smtputf8" in signer
    assert "-o content_filter=\n" in signer  # no loop
    assert "smtpd_relay_restrictions=permit_mynetworks,reject" in signer
    assert "dkim-sign unix" in master
    main = settings(postfix_render("postfix/main.cf.j2", env))
    assert main["milter_default_action"] == "tempfail"  # never unsigned when OpenDKIM is away
    assert "smtpd_milters" not in main and "non_smtpd_milters" not in main


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_opendkim_signs_only_and_listens_on_loopback(env):
    conf = settings(
        render(
            "opendkim/opendkim.conf.j2", env, milter_port=dkim.MILTER_PORT, keys_dir=dkim.KEYS_DIR
        ),
        sep=" ",
    )
    assert conf["Mode"] == "s"
    assert conf["Socket"] == f"inet:{dkim.MILTER_PORT}@127.0.0.1"
    assert conf["KeyTable"] == f"file:{dkim.KEYS_DIR}/key.table"
    assert conf["SigningTable"] == f"refile:{dkim.KEYS_DIR}/signing.table"


def test_the_transport_map_routes_the_inventorys_domains():
    data = SimpleNamespace(**{**group_data("vagrant"), "mail_transports": {"b.test": "smtp:[x]:2"}})
    rendered = render("postfix/transport.j2", "vagrant", **postfix_task.variables(data))
    assert "b.test smtp:[x]:2" in rendered.splitlines()
    main = settings(postfix_render("postfix/main.cf.j2", "vagrant"))
    assert main["transport_maps"] == "texthash:/etc/postfix/transport"


def test_the_devstack_signs_nothing(tmp_path):
    values = devstack_postfix.variables(
        state=tmp_path,
        ports=devstack_postfix.PostfixPorts(smtp=1, submission=2, submissions=3, lmtp=4, auth=5),
        cert=tmp_path / "c",
        key=tmp_path / "k",
        mail_domain="example.test",
    )
    for template in ("postfix/main.cf.j2", "postfix/master.cf.j2"):
        text = render(template, "vagrant", **values)
        assert "dkim" not in text.lower() and "transport_maps" not in text


def dkim_tool(env: str, keys_dir: str) -> dict:
    """emailservice-dkim as the deploy renders it for `env`'s inventory, its keys in
    `keys_dir`, loaded: its functions by name."""
    data = SimpleNamespace(**group_data(env))
    source = render(
        "dkim/emailservice-dkim.j2",
        env,
        keys_dir=keys_dir,
        domains=dkim.domains(data),
        mail_hostname=data.mail_hostname,
        public_addresses=data.public_addresses,
        dmarc=data.dmarc_record,
        key_bits=data.dkim_key_bits,
    )
    namespace: dict = {"__name__": "emailservice_dkim"}
    exec(compile(source, "emailservice-dkim", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_key_tool_is_python_with_the_inventorys_domains(env):
    namespace = dkim_tool(env, dkim.KEYS_DIR)
    assert namespace["DOMAINS"] == [group_data(env)["mail_domain"]]
    # Zone-file strings: at most 255 characters each, joined back unchanged.
    value = "p=" + "A" * 400
    quoted = namespace["quoted"](value)
    assert [len(s) for s in re.findall(r'"([^"]*)"', quoted)] == [255, 147]
    assert "".join(re.findall(r'"([^"]*)"', quoted)) == value
