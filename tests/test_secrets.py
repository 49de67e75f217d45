"""Secrets at rest (encryption with the runner token) and in logs (scrubbing)."""

import base64
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from booklab_spawner.crypto import SecretBox
from booklab_spawner.deploykeys import generate_keypair
from booklab_spawner.exceptions import SecretError
from booklab_spawner.scrub import MIN_SECRET, PEM_MAX_LINES, REDACTED, Scrubber

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
    assert "tok%2D123456789" not in out and "123456789" not in out
    assert out == f"fatal: {REDACTED} and {REDACTED}? header Basic {REDACTED}"


SECRET = "tok-1.2_3~4/5+6 é"


def _pct(text: str, upper: bool = True, encode_all: bool = False, twice: bool = False) -> str:
    """Percent-encode as other encoders do: every byte, lower-case hex, double."""
    if encode_all:
        out = "".join(f"%{b:02X}" for b in text.encode())
    else:
        out = quote(text, safe="")
    if not upper:
        out = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), out)
    return out.replace("%", "%25") if twice else out


@pytest.mark.parametrize("encoded", [
    SECRET,
    quote(SECRET, safe=""),                    # leaves - . _ ~ alone, upper-case hex
    quote(SECRET),                             # leaves / alone too
    quote_plus(SECRET),                        # form encoding: '+' for the space
    _pct(SECRET, upper=False),                 # %2f, %c3%a9
    _pct(SECRET, encode_all=True),             # %2D %2E %5F %7E as some encoders do
    _pct(SECRET, upper=False, encode_all=True),
    _pct(SECRET, twice=True),                  # double encoding
    "tok%2D1.2%5F3~4%2f5+6%20%C3%a9",          # a mix
    base64.b64encode(SECRET.encode()).decode(),
    base64.b64encode(SECRET.encode()).decode().rstrip("="),
    base64.urlsafe_b64encode(SECRET.encode()).decode(),
], ids=range(12))
def test_every_encoded_form_of_a_known_secret_is_gone(encoded):
    out = Scrubber([SECRET])(f"remote: https://host/x?a={encoded}&b=1 done")
    assert encoded not in out and "4" not in out.split("?", 1)[1].split("&")[0], out
    assert out == f"remote: https://host/x?a={REDACTED}&b=1 done"


@pytest.mark.parametrize("line,leak", [
    ("remote: https://oauth2:abcdef123@gitlab.example.org/x.git", "abcdef123"),
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
    ("GET /api/v4/user?access_token=zzz999 HTTP/1.1", "zzz999"),
    ("token glpat-AAAAAAAAAAAAAAAAAAAA used", "glpat-AAAA"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----", "b3Blbn"),
    ("connecting to redis://:s3cretpass@redis.internal:6379/0", "s3cretpass"),
    ("REDIS_URL=rediss://:s3cretpass@10.0.0.5/1 set", "s3cretpass"),
    ("cloning https://glpat0123456789abcdefXYZ@gitlab.example.org/x.git",
     "glpat0123456789abcdefXYZ"),
])
def test_scrubber_catches_unannounced_credentials(line, leak):
    assert leak not in Scrubber()(line)


def test_every_line_of_a_known_private_key_goes_even_alone():
    key = generate_keypair()[0]
    s = Scrubber()
    s.add(key)
    body = [line for line in key.splitlines() if line and not line.startswith("-----")]
    assert len(body) >= 4
    for line in body:  # e.g. git or ssh printing one line of it
        out = s(f"debug1: read {line} from the key file")
        assert line not in out and REDACTED in out, out
    unwrapped = "".join(body)  # a tool that prints the key on one line
    assert unwrapped not in s(f"key={unwrapped}")
    assert quote(body[2], safe="") not in s(f"x={quote(body[2], safe='')}")


def test_an_unannounced_private_key_logged_line_by_line_is_removed():
    """Each log line is scrubbed on its own: the block spans several calls."""
    key = generate_keypair()[0]
    s = Scrubber()
    lines = ["Step 2/4 : RUN cat /tmp/key"] + key.splitlines() + ["Step 3/4 : done"]
    out = [s(line) for line in lines]
    assert out[0] == "Step 2/4 : RUN cat /tmp/key" and out[-1] == "Step 3/4 : done"
    kept = "\n".join(out)
    for line in key.splitlines()[1:-1]:
        assert line not in kept
    assert all(line == REDACTED for line in out[1:-1]), out
    # a block that starts mid-line and ends mid-line keeps the text around it
    s = Scrubber()
    first, *middle, last = key.splitlines()
    assert s(f"before {first}") == f"before {REDACTED}"
    assert [s(line) for line in middle] == [REDACTED] * len(middle)
    assert s(f"{last} after") == f"{REDACTED} after"
    assert s("next line") == "next line"


def test_an_unterminated_private_key_block_stops_redacting_after_a_while():
    s = Scrubber()
    s("-----BEGIN RSA PRIVATE KEY-----")
    assert s("MIIEow") == REDACTED
    for _ in range(PEM_MAX_LINES):
        s("more")
    assert s("Step 5/5 : done") == "Step 5/5 : done"


@pytest.mark.parametrize("line", [
    "Step 3/5 : COPY --chown=1000:1000 . /home/jovyan/",
    "#5 [internal] load metadata for docker-image://booklab-test/notebook:latest@sha256:ab",
    "Cloning into 'x'... from ssh://git@127.0.0.1:2222/demo/hello.git",
    "Server listening at http://127.0.0.1:8888/user/alice/x/lab?token=",
    "100% |████████| 3.1 MB",
])
def test_scrubber_leaves_ordinary_lines_alone(line):
    assert Scrubber(["secret-value"])(line) == line


@settings(max_examples=300, deadline=None, database=None)
@given(secret=st.text(min_size=MIN_SECRET, max_size=40).filter(lambda t: t.strip() == t),
       choices=st.lists(st.sampled_from(["plain", "upper", "lower", "twice"]), min_size=40,
                        max_size=40),
       before=st.text(alphabet="abc :/=?&", max_size=10),
       after=st.text(alphabet="abc :/=?&", max_size=10))
def test_property_a_known_secret_goes_in_any_mix_of_percent_encodings(secret, choices,
                                                                     before, after):
    def enc(ch: str, how: str) -> str:
        if how == "plain":
            return ch
        hexes = [f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")]
        text = "".join(hexes)
        return {"upper": text, "lower": text.lower(), "twice": text.replace("%", "%25")}[how]

    encoded = "".join(enc(ch, how) for ch, how in zip(secret, choices, strict=False))
    out = Scrubber([secret])(before + encoded + after)
    assert encoded not in out and secret not in out
