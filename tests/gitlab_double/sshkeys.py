"""OpenSSH public keys: validation and the two fingerprints GitLab shows."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

_ECDSA_POINT_SIZES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", *(f"ecdsa-sha2-{c}" for c in _ECDSA_POINT_SIZES))


class InvalidKey(ValueError):
    pass


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str

    @property
    def text(self) -> str:
        """The key as GitLab stores it: type, base64 and comment."""
        b64 = base64.b64encode(self.blob).decode()
        return f"{self.type} {b64} {self.comment}".rstrip()

    @property
    def fingerprint_md5(self) -> str:
        digest = hashlib.md5(self.blob).hexdigest()
        return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))

    @property
    def fingerprint_sha256(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode()
        return "SHA256:" + digest.rstrip("=")


def parse(text: str) -> PublicKey:
    """Parse one OpenSSH public key line; raise InvalidKey when it is not one."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise InvalidKey("unsupported or missing key type")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("key data is not base64") from None
    fields = _split_wire(blob)
    _check_fields(parts[0], fields)
    return PublicKey(type=parts[0], blob=blob, comment=parts[2] if len(parts) > 2 else "")


def _split_wire(blob: bytes) -> list[bytes]:
    """Split SSH wire format: a sequence of uint32-length-prefixed strings."""
    fields, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise InvalidKey("truncated key data")
        (size,) = struct.unpack(">I", blob[pos:pos + 4])
        pos += 4
        if pos + size > len(blob):
            raise InvalidKey("truncated key data")
        fields.append(blob[pos:pos + size])
        pos += size
    return fields


def _check_fields(key_type: str, fields: list[bytes]) -> None:
    if not fields or fields[0] != key_type.encode():
        raise InvalidKey("key data does not match its type")
    if key_type == "ssh-ed25519":
        ok = len(fields) == 2 and len(fields[1]) == 32
    elif key_type == "ssh-rsa":
        ok = len(fields) == 3 and len(fields[2]) >= 64 and fields[1] != b""
    else:
        curve = key_type.rsplit("-", 1)[1]
        ok = (len(fields) == 3 and fields[1] == curve.encode()
              and len(fields[2]) == _ECDSA_POINT_SIZES[curve] and fields[2][:1] == b"\x04")
    if not ok:
        raise InvalidKey("malformed key data")
