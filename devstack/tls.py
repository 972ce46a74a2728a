"""The stack's self-signed certificate (RSA, CN/SAN localhost and 127.0.0.1), made with openssl."""

from __future__ import annotations

import os
from pathlib import Path

from devstack.proc import run

# Our own config rather than the system openssl.cnf, so the extensions are always exactly these:
# CA:TRUE lets the certificate be its own trust anchor (cafile=), and the key identifiers keep
# newer Pythons' strict X.509 verification happy.
OPENSSL_CNF = """\
[req]
distinguished_name = dn
x509_extensions = v3
prompt = no
[dn]
CN = localhost
O = emailservice devstack
[v3]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def ensure_cert(directory: Path) -> tuple[Path, Path]:
    """Create cert.pem and key.pem in `directory` unless both exist; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    cnf = directory / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF)
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-config",
            str(cnf),
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        what="creating the TLS certificate",
    )
    # Daemons read the key as root before dropping privileges; nobody else needs it.
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key
