"""Secrets at rest (encryption with the runner token) and in logs (scrubbing)."""

import base64

import pytest

from booklab_spawner.crypto import SecretBox
from booklab_spawner.exceptions import SecretError
from booklab_spawner.scrub import REDACTED, Scrubber

TOKEN = "t" * 40


def test_roundtrip_and_ciphertext_hides_the_value():
    box = SecretBox(TOKEN)
    blob = box.encrypt({"clone": {"password": "glpat-supersecret"}})
    assert "supersecret" not in blob
    assert box.decrypt(blob) == {"clone": {"password": "glpat-supersecret"}}


def test_other_runner_token_cannot_decrypt():
    blob = SecretBox(TOKEN).encrypt({"x": 1})
    with pytest.raises(SecretError, match="runner token"):
        SecretBox("u" * 40).decrypt(blob)


def test_tampered_blob_is_refused():
    blob = SecretBox(TOKEN).encrypt({"x": 1})
    tampered = blob[:-5] + ("A" if blob[-5] != "A" else "B") + blob[-4:]
    with pytest.raises(SecretError):
        SecretBox(TOKEN).decrypt(tampered)


def test_short_runner_token_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        SecretBox("short")


def test_scrubber_removes_known_secrets_in_their_encodings():
    s = Scrubber()
    s.add_basic_auth("oauth2", "tok-123456789")
    basic = base64.b64encode(b"oauth2:tok-123456789").decode()
    line = f"fatal: tok-123456789 and tok%2D123456789? header Basic {basic}"
    out = s(line)
    assert "tok-123456789" not in out and basic not in out
    assert out.count(REDACTED) >= 2


@pytest.mark.parametrize("line,leak", [
    ("remote: https://oauth2:abcdef123@gitlab.example.org/x.git", "abcdef123"),
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
    ("GET /api/v4/user?access_token=zzz999 HTTP/1.1", "zzz999"),
    ("token glpat-AAAAAAAAAAAAAAAAAAAA used", "glpat-AAAA"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----", "b3Blbn"),
])
def test_scrubber_catches_unannounced_credentials(line, leak):
    assert leak not in Scrubber()(line)


def test_scrubber_leaves_ordinary_lines_alone():
    line = "Step 3/5 : COPY --chown=1000:1000 . /home/jovyan/"
    assert Scrubber(["secret-value"])(line) == line
