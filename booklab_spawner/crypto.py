"""Encryption of job secrets at rest in Redis.

The hub and the runners share one secret, the *runner token*. A Fernet key
(AES-128-CBC + HMAC-SHA256) is derived from it with HKDF, so a reader of Redis
without the token learns nothing from the ``token:<job>`` keys and cannot forge
them. See ``docs/security.md``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .exceptions import SecretError

MIN_TOKEN_LENGTH = 32
_INFO = b"booklab job secrets v1"


def check_runner_token(token: str) -> str:
    """Return the token if it is long enough to derive a key from."""
    if not token or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the runner token must be at least {MIN_TOKEN_LENGTH} characters "
            "(generate one with: openssl rand -hex 32)"
        )
    return token


class SecretBox:
    """Encrypts and decrypts JSON-able values with a key derived from the runner token."""

    def __init__(self, runner_token: str):
        check_runner_token(runner_token)
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"booklab", info=_INFO).derive(
            runner_token.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(raw))

    def encrypt(self, value: Any) -> str:
        return self._fernet.encrypt(json.dumps(value).encode()).decode()

    def decrypt(self, token: str | bytes, ttl: int | None = None) -> Any:
        if isinstance(token, str):
            token = token.encode()
        try:
            return json.loads(self._fernet.decrypt(token, ttl=ttl))
        except InvalidToken:
            raise SecretError(
                "cannot decrypt the job's secrets: the runner token differs from the hub's"
            ) from None
