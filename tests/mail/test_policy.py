"""The outbound host policy as pure logic: which addresses are refused, how entries allow them.

Names here resolve without any DNS server: numeric spellings (`0x7f.1`, `2130706433`, `127.1`)
are parsed by the system's resolver like the service's own lookups, `localhost` comes from
/etc/hosts, and `.invalid` never resolves (RFC 6761).
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from app.config import ConfigError, Settings, parse_host_entry
from app.mail import Category, MailConnectionError
from app.mail.policy import HostPolicy, refused_range


def soon() -> float:
    return time.monotonic() + 10


def refused(policy: HostPolicy, host: str, port: int, clear_text: bool = False) -> str:
    with pytest.raises(MailConnectionError) as raised:
        policy.check(host, port, soon(), clear_text=clear_text)
    return raised.value.category


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "198.18.0.1",
        "198.19.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "2001:db8::1",
    ],
)
def test_every_non_public_range_is_refused(address):
    assert refused_range(ipaddress.ip_address(address)) is not None
    assert refused(HostPolicy(), address, 993) == Category.ADDRESS_NOT_ALLOWED


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700::1111"]
)
def test_public_addresses_pass_and_are_what_is_connected_to(address):
    assert refused_range(ipaddress.ip_address(address)) is None
    assert HostPolicy().check(address, 993, soon()) == address


@pytest.mark.parametrize(
    "host", ["0x7f.1", "2130706433", "127.1", "0177.0.0.1", "localhost", "[::1]", "::ffff:7f00:1"]
)
def test_other_spellings_of_loopback_are_refused(host):
    assert refused(HostPolicy(), host, 6379) == Category.ADDRESS_NOT_ALLOWED


def fixed_names(table):
    """A resolver answering from `table` (name -> addresses), like DNS records would."""

    def resolve(name, port, deadline):
        if name not in table:
            from app.mail.policy import resolve as system

            return system(name, port, deadline)
        return [ipaddress.ip_address(a) for a in table[name]]

    return resolve


def test_a_name_is_refused_when_any_of_its_addresses_is():
    names = fixed_names({"mixed.test": ["8.8.8.8", "10.0.0.1"], "public.test": ["8.8.4.4"]})
    assert refused(HostPolicy(resolver=names), "mixed.test", 993) == "address not allowed"
    assert HostPolicy(resolver=names).check("public.test", 993, soon()) == "8.8.4.4"
    # Allowed once its private address is: the connection goes to the first address.
    allowed = HostPolicy(["10.0.0.0/8:993"], resolver=names)
    assert allowed.check("mixed.test", 993, soon()) == "8.8.8.8"


def test_an_entry_with_a_port_allows_that_port_only():
    policy = HostPolicy(["127.0.0.1:1143"])
    assert policy.check("127.0.0.1", 1143, soon()) == "127.0.0.1"
    assert refused(policy, "127.0.0.1", 6379) == Category.ADDRESS_NOT_ALLOWED
    assert refused(policy, "127.0.0.2", 1143) == Category.ADDRESS_NOT_ALLOWED
    # Another spelling of the allowed address is the same address.
    assert policy.check("0x7f.1", 1143, soon()) == "127.0.0.1"
    assert policy.check("::ffff:127.0.0.1", 1143, soon()) == "127.0.0.1"


def test_cidr_entries_with_and_without_port():
    policy = HostPolicy(["10.0.0.0/8", "192.168.1.0/24:587", "[fd00::/8]:993"])
    assert policy.check("10.20.30.40", 1, soon()) == "10.20.30.40"
    assert policy.check("192.168.1.7", 587, soon()) == "192.168.1.7"
    assert refused(policy, "192.168.1.7", 25) == Category.ADDRESS_NOT_ALLOWED
    assert refused(policy, "192.168.2.7", 587) == Category.ADDRESS_NOT_ALLOWED
    assert policy.check("fd00::5", 993, soon()) == "fd00::5"
    assert refused(policy, "fd00::5", 143) == Category.ADDRESS_NOT_ALLOWED
    assert refused(policy, "169.254.169.254", 80) == Category.ADDRESS_NOT_ALLOWED


def test_ipv6_entries_bare_and_bracketed():
    assert HostPolicy(["::1"]).check("::1", 4190, soon()) == "::1"
    policy = HostPolicy(["[::1]:993"])
    assert policy.check("[::1]", 993, soon()) == "::1"
    assert refused(policy, "::1", 143) == Category.ADDRESS_NOT_ALLOWED


def test_an_entrys_name_is_resolved_too():
    policy = HostPolicy(["localhost:2525"])
    assert policy.check("127.0.0.1", 2525, soon()) == "127.0.0.1"
    assert refused(policy, "127.0.0.1", 2526) == Category.ADDRESS_NOT_ALLOWED
    # A name that resolves to nothing allows nothing.
    assert refused(HostPolicy(["nothing.invalid"]), "127.0.0.1", 25) == "address not allowed"


def test_clear_text_needs_an_entry_even_for_a_public_address():
    assert refused(HostPolicy(), "8.8.8.8", 143, clear_text=True) == "clear text not allowed"
    assert HostPolicy(["8.8.8.8:143"]).check("8.8.8.8", 143, soon(), clear_text=True)
    policy = HostPolicy(["127.0.0.1:1143"])
    assert policy.check("127.0.0.1", 1143, soon(), clear_text=True) == "127.0.0.1"


def test_names_that_do_not_resolve_and_deadlines_in_the_past():
    assert refused(HostPolicy(), "no-such-host.invalid", 993) == Category.NAME_NOT_RESOLVED
    with pytest.raises(MailConnectionError) as raised:
        HostPolicy().check("8.8.8.8", 993, time.monotonic() - 1)
    assert raised.value.category == Category.TIMED_OUT


def test_the_error_says_the_category_and_never_the_address():
    with pytest.raises(MailConnectionError) as raised:
        HostPolicy().check("0x7f.1", 6379, soon())
    assert str(raised.value) == "address not allowed"


@pytest.mark.parametrize(
    ("entry", "network", "name", "port"),
    [
        ("127.0.0.1:1143", "127.0.0.1/32", None, 1143),
        ("10.0.0.0/8", "10.0.0.0/8", None, None),
        ("10.0.0.0/8:993", "10.0.0.0/8", None, 993),
        ("[::1]:993", "::1/128", None, 993),
        ("::1", "::1/128", None, None),
        ("[fd00::/8]:25", "fd00::/8", None, 25),
        ("mail.internal", None, "mail.internal", None),
        ("Mail.Internal.:587", None, "mail.internal", 587),
    ],
)
def test_entry_forms(entry, network, name, port):
    parsed = parse_host_entry(entry)
    assert (str(parsed.network) if parsed.network else None, parsed.name, parsed.port) == (
        network,
        name,
        port,
    )


@pytest.mark.parametrize(
    "entry",
    ["host:0", "host:70000", "host:x", "10.0.0.0/33", "[127.0.0.1]:25", "a_b c", "::1:99x", "h/8"],
)
def test_a_malformed_entry_stops_start_up_naming_it(entry):
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping(
            {
                "DATABASE_URL": "postgresql://u@h/d",
                "REDIS_URL": "redis://h:6379/0",
                "JWT_SECRET": "x" * 32,
                "ENCRYPTION_KEY": "A" * 43 + "=",
                "ALLOWED_PRIVATE_HOSTS": f"127.0.0.1:25, {entry}",
            }
        )
    assert "ALLOWED_PRIVATE_HOSTS" in str(raised.value) and repr(entry) in str(raised.value)
