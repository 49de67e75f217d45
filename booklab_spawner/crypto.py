"""Encryption and signatures for what hub and runners exchange through Redis.

The hub and the runners share one secret, the *runner token*. Keys are
derived from it with HKDF (:func:`derive_key`, a different ``info`` each, so
none reveals another):

- a Fernet key (AES-128-CBC + HMAC-SHA256) for the job secrets
  (``token:<job>``), each *sealed* to its job: the plaintext names the job id
  and the fields the runner acts on, and :meth:`SecretBox.open` refuses a blob
  whose binding differs from the job record (a transplanted credential);
- an HMAC-SHA256 key (:class:`Signer`) with which the hub signs the ``conf``
  hash and each job record, and runners sign the notebook URL they report;
- on runners, the key of the HMAC in image names (``runner/imagekey.py``).

A Redis writer without the token can therefore neither read a secret, nor move
one to a job of its own making, nor change what a runner acts on, nor point the
hub at a URL of its choosing. See ``docs/protocol.md`` ("Signatures").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .exceptions import SecretError, SignatureError

MIN_TOKEN_LENGTH = 32
_INFO = b"booklab job secrets v1"
_SIGN_INFO = b"booklab signatures v2"

# job fields a sealed secret is bound to: a blob decrypts only for a job whose
# record has exactly these values (and the same id)
BOUND_FIELDS = ("user", "server_name", "project_id", "sha", "clone_url", "ssh_url",
                "clone_method")
# job fields the hub signs (field ``sig``): everything a runner acts on
SIGNED_JOB_FIELDS = ("id", "user", "server_name", "project", "project_id", "ref", "sha",
                     "clone_url", "ssh_url", "clone_method", "cmd", "args", "env",
                     "mem_limit", "cpu_limit")
# signed when not empty (a record written before launch profiles keeps its signature;
# removing one from a record that had it breaks the signature as changing it does)
SIGNED_JOB_EXTRAS = ("profile", "labels", "gpus")


def check_runner_token(token: str) -> str:
    """Return the token if it is long enough to derive a key from."""
    if not token or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the runner token must be at least {MIN_TOKEN_LENGTH} characters "
            "(generate one with: openssl rand -hex 32)"
        )
    return token


def derive_key(runner_token: str, info: bytes) -> bytes:
    """A 32-byte key for one purpose (``info``), derived from the runner token with HKDF."""
    check_runner_token(runner_token)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"booklab", info=info).derive(
        runner_token.encode())


def signed_message(purpose: str, fields: Mapping[str, str]) -> bytes:
    """The bytes a signature covers: unambiguous, easy to rebuild in any language.

    ``booklab-v2`` NUL purpose NUL, then for each field in sorted name order
    ``<len(name)>:<name><len(value)>:<value>`` (lengths in bytes of UTF-8).
    """
    out = [b"booklab-v2\0", purpose.encode(), b"\0"]
    for name in sorted(fields):
        n, v = name.encode(), str(fields[name]).encode()
        out += [str(len(n)).encode(), b":", n, str(len(v)).encode(), b":", v]
    return b"".join(out)


class Signer:
    """HMAC-SHA256 signatures with a key derived from the runner token."""

    def __init__(self, runner_token: str):
        self._key = derive_key(runner_token, _SIGN_INFO)

    def sign(self, purpose: str, fields: Mapping[str, str]) -> str:
        return hmac.new(self._key, signed_message(purpose, fields), hashlib.sha256).hexdigest()

    def valid(self, purpose: str, fields: Mapping[str, str], signature: str | None) -> bool:
        return bool(signature) and hmac.compare_digest(self.sign(purpose, fields),
                                                       str(signature))

    def check(self, purpose: str, fields: Mapping[str, str], signature: str | None,
              what: str) -> None:
        if not self.valid(purpose, fields, signature):
            raise SignatureError(f"refusing {what}: it is not signed with the runner token "
                                 "(changed in Redis, or the hub's runner token differs)")

    # -- the three things that are signed -------------------------------------------
    def sign_job(self, record: Mapping[str, str]) -> str:
        return self.sign("job", _signed_job(record))

    def check_job(self, record: Mapping[str, str]) -> None:
        self.check("job", _signed_job(record), record.get("sig"),
                   f"job {record.get('id', '?')}")

    def sign_url(self, job_id: str, runner_id: str, url: str) -> str:
        return self.sign("url", {"job": job_id, "runner": runner_id, "url": url})

    def url_is_signed(self, job_id: str, runner_id: str, url: str, signature: str) -> bool:
        return self.valid("url", {"job": job_id, "runner": runner_id, "url": url}, signature)


def _signed_job(record: Mapping[str, str]) -> dict[str, str]:
    fields = {k: record.get(k, "") for k in SIGNED_JOB_FIELDS}
    fields.update({k: record[k] for k in SIGNED_JOB_EXTRAS if record.get(k)})
    return fields


class SecretBox:
    """Encrypts and decrypts JSON-able values with a key derived from the runner token."""

    def __init__(self, runner_token: str):
        raw = derive_key(runner_token, _INFO)
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

    def seal(self, job_id: str, record: Mapping[str, str], value: dict[str, Any]) -> str:
        """Encrypt ``value`` bound to job ``job_id`` and its record's BOUND_FIELDS."""
        bound = {k: str(record.get(k, "")) for k in BOUND_FIELDS}
        return self.encrypt({**value, "job": job_id, "bound": bound})

    def open(self, blob: str | bytes, record: Mapping[str, str]) -> dict[str, Any]:
        """Decrypt a sealed blob, refusing it unless it was sealed for ``record``."""
        value = self.decrypt(blob)
        bound = value.get("bound") if isinstance(value, dict) else None
        if not isinstance(bound, dict) or value.get("job") != record.get("id"):
            raise SecretError(f"refusing a transplanted credential: the secrets of job "
                              f"{record.get('id', '?')} were sealed for another job")
        changed = sorted(k for k in BOUND_FIELDS if bound.get(k) != record.get(k, ""))
        if changed:
            raise SecretError(f"refusing a transplanted credential: job {record.get('id')} "
                              f"differs from what its secrets were sealed for "
                              f"({', '.join(changed)})")
        return value
