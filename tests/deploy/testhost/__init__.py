"""A real Debian 13 ("trixie") or Debian 12 ("bookworm") host for the deploy tests, booted on
this machine.

    ensure_tools()
    with boot_test_host("d3f2a1", ["nginx", "curl"], release="trixie") as host:
        host.run("systemctl is-system-running")       # over SSH, as root, with a per-run key
        # pyinfra reaches it exactly as it reaches a user's server: host.address + host.ssh_key

What it is: a root filesystem made with debootstrap, booted with systemd as PID 1 under
`systemd-nspawn` in a network namespace of its own, reached over SSH (root, ed25519 key made per
run) at its own address. Everything needs root; nothing is left behind when the block exits.
By hand: `python -m tests.deploy.testhost build|shell [--release trixie|bookworm] PACKAGE...`.

One module per concern, each describing its part:
* image.py: the cached root filesystem (/var/cache/emailservice-testhost) and the local apt
  repository of the deploy's packages, built once per release and package list and reused;
* boot.py: booting a host from the pristine image under systemd-nspawn, waiting until it is up,
  powering it off, and tearing down hosts whose test run died;
* network.py: the host's network namespace, veth pair and address, and private links between
  hosts;
* ssh.py: the per-run key, ssh's arguments and commands run on the host;
* machine.py: commands, locks and tools on this machine, shared by the others.

What was found on this machine (Debian 12, kernel 6.18, cgroup v1/v2 hybrid, no systemd as PID 1)
-------------------------------------------------------------------------------------------------
(the first points with bookworm hosts; trixie's last)
* Timings (one stderr line each for build, boot and teardown): a cold build with the deploy's
  full package list (postgresql redis-server postfix dovecot-imapd dovecot-lmtpd nginx python3
  python3-venv openssl nftables ca-certificates curl ssl-cert) takes 42-51 s: the base
  (debootstrap + systemd, sshd; 211 MB) 38-45 s, then 71 .debs (89 MB) downloaded, indexed and
  checked offline in 4-6 s; a new package list on a cached base takes 3-4 s. A warm boot to
  `running` takes about 1 s; installing the full list inside the host about 32 s; teardown
  0.2 s for a bare host, 1.5 s with every service running.
* The hardening the deploy puts on its units works under nspawn with no extra option:
  ProtectSystem=strict (+ ReadWritePaths), ProtectHome=yes, PrivateTmp=yes, PrivateDevices=yes,
  NoNewPrivileges=yes and an empty CapabilityBoundingSet= (the tests check each from inside a
  unit). Debian's own hardened units (redis-server, postgresql) start too.
* nftables needs CAP_NET_ADMIN, which nspawn drops unless it made the network itself: without
  `--capability=CAP_NET_ADMIN`, `nft list ruleset` fails with "Operation not permitted". With it,
  the ruleset acts on the host's own namespace only (tested: port 80 dropped, 22 still open).
* /proc/sys is read-only under nspawn. SYSTEMD_NSPAWN_API_VFS_WRITABLE=network makes net.*
  writable (per namespace); machine-wide keys stay read-only on purpose, so e.g.
  `sysctl -w vm.overcommit_memory=1` (which Redis asks for) fails in the test host with
  "permission denied": a deploy that sets such a key must tolerate that in a container.
* This machine's bounding set lacks CAP_SYS_RESOURCE: nspawn logs "Some capabilities will not be
  set because they are not in the current bounding set", and no limit can go above this
  machine's hard limits (NOFILE 20000 here; redis-server's LimitNOFILE=65535 ends up 20000 and
  it still starts).
* No DNS and no internet inside the host, by design: packages come only from the local repo.
* Debian 13 from this Debian 12 machine: Debian 12's debootstrap and debian-archive-keyring
  already know trixie (image.py), so `release="trixie"` needs nothing more. Timings: the
  trixie base 43 s (210 MB), the image with the deploy's full package list 49 s in all (88
  .debs, 98 MB: PostgreSQL 17, Dovecot 2.4.1, Postfix 3.10, nginx 1.26, Python 3.13); a boot
  about 1.3 s. One difference in use: its systemd (257) was seen taking its full 90 s to stop
  root's user manager (user@0, started by an SSH login) at a power-off soon after a login, so
  each boot caps that stop at 5 s (boot.py); a trixie host then powers off in 0.5-5.5 s.
"""

from tests.deploy.testhost.boot import TestHost, boot_test_host
from tests.deploy.testhost.image import DEFAULT_RELEASE, RELEASES, Image, ensure_image, image_key
from tests.deploy.testhost.machine import TestHostError, ensure_tools
from tests.deploy.testhost.network import private_link

__all__ = [
    "DEFAULT_RELEASE",
    "RELEASES",
    "Image",
    "TestHost",
    "TestHostError",
    "boot_test_host",
    "ensure_image",
    "ensure_tools",
    "image_key",
    "private_link",
]
