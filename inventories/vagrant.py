"""The Vagrant box (`vagrant up`): one Debian 13 host with every role, at a private address."""

from pathlib import Path

# Vagrant keeps the box's key per provider (virtualbox, libvirt, ...).
_keys = sorted(Path(".vagrant/machines/default").glob("*/private_key"))

vagrant = [
    (
        "192.168.56.10",
        {
            "ssh_user": "vagrant",
            "ssh_key": str(_keys[0]) if _keys else None,
            "ssh_strict_host_key_checking": "no",
            "ssh_known_hosts_file": "/dev/null",
            "_sudo": True,
        },
    )
]
