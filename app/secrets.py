"""Authenticated encryption of stored credentials, with key rotation.

Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) under the keys in ENCRYPTION_KEY,
newest first: MultiFernet encrypts with the newest and decrypts with any, so adding a key in
front and running `emailservice keys rotate` moves every secret to it.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretError(Exception):
    """A stored secret does not decrypt under any configured key."""


def generate_key() -> str:
    """A new key in the ENCRYPTION_KEY format."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts and decrypts credentials with the configured keys."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernets = [Fernet(key.encode("ascii")) for key in keys]
        self._multi = MultiFernet(self._fernets)

    def encrypt(self, plaintext: str) -> bytes:
        return self._multi.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._multi.decrypt(bytes(token)).decode("utf-8")
        except InvalidToken:
            raise SecretError(
                "secret does not decrypt under any configured ENCRYPTION_KEY"
            ) from None

    def is_current(self, token: bytes) -> bool:
        """Whether `token` is encrypted under the newest key."""
        try:
            self._fernets[0].decrypt(bytes(token))
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt `token` under the newest key."""
        try:
            return self._multi.rotate(bytes(token))
        except InvalidToken:
            raise SecretError(
                "secret does not decrypt under any configured ENCRYPTION_KEY"
            ) from None
