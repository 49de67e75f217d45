"""The one place where secrets are removed from text before it is logged.

Every line that goes to a job log, and every runner log message that may carry
command output, passes through a :class:`Scrubber` (one per job).

What it catches:

- the secrets it was told about (``add``), however they are percent-encoded:
  every character may appear plain or as ``%XX`` in either case, also double
  encoded (``%25XX``), a space also as ``+``, so ``tok-1``, ``tok%2D1``,
  ``tok%2d1`` and ``%74%6F%6B-1`` all go; their base64 (standard and URL-safe,
  with or without padding); the base64 of ``user:password`` for HTTP Basic;
- every line of a known multi-line secret (a PEM private key) on its own, and
  its body unwrapped onto one line: a log line that carries one line of the key
  loses it even when the rest of the key is in other lines;
- credentials nobody announced: ``scheme://user:password@`` (also with an empty
  user, ``redis://:password@host``) and long token-like user names
  (``https://<token>@host``), ``Authorization`` headers, ``*token=`` query
  parameters, ``glpat-`` tokens, and PEM private key blocks, also when the block
  arrives over several calls (lines after ``-----BEGIN ... PRIVATE KEY-----`` are
  removed until its ``END`` line, for at most ``PEM_MAX_LINES`` calls).

Out of scope: the base64 of a secret that sits inside a longer base64 text at an
offset that is not a multiple of 3 bytes (its characters differ), other
encodings (hex, HTML entities, JSON ``\\u`` escapes), a known key re-wrapped at a
different width, and unannounced secrets that have no recognisable shape.
"""

from __future__ import annotations

import base64
import re

REDACTED = "[secret]"
MIN_SECRET = 6  # shorter values (and key lines) are not scrubbed: too many false hits
PEM_MAX_LINES = 200  # calls a PEM block without END keeps redacting (an RSA-8192 key ~ 100)

_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")

# credentials that may appear even when we were not told about them
_GENERIC = [
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[A-Za-z0-9_.~%+-]{20,}@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)(authorization:\s*(?:basic|bearer|token)\s+)\S+"), r"\1" + REDACTED),
    (re.compile(r"(?i)((?:access_token|private_token|refresh_token|token)=)[^&\s\"']+"),
     r"\1" + REDACTED),
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{10,}"), REDACTED),
    (re.compile(_PEM_BEGIN.pattern + r".*?" + _PEM_END.pattern, re.S), REDACTED),
]


def _encoded_pattern(needle: str) -> str:
    """A regex matching ``needle`` with any of its characters percent-encoded
    (upper or lower case hex, once or twice)."""
    parts = []
    for ch in needle:
        alternatives = [re.escape(ch)] + ([r"\+"] if ch == " " else [])  # form encoding
        encoded = "".join(f"%(?:25)?{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        alternatives.append(re.sub(r"[A-F]", lambda m: f"[{m[0]}{m[0].lower()}]", encoded))
        parts.append("(?:" + "|".join(alternatives) + ")")
    return "".join(parts)


def _base64_forms(value: str) -> set[str]:
    raw = value.encode("utf-8", "surrogatepass")
    forms = set()
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode()
        forms.update({text, text.rstrip("=")})
    return {f for f in forms if len(f) >= MIN_SECRET}


class Scrubber:
    """Replaces known secrets (and their common encodings) with ``[secret]``."""

    def __init__(self, secrets: list[str] | None = None):
        self._needles: list[str] = []
        self._patterns: list[re.Pattern[str]] = []
        self._pem_lines_left = 0  # >0 while inside a PEM block that spans calls
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < MIN_SECRET:
            return
        self._add_needle(secret)
        for form in _base64_forms(secret):
            self._add_needle(form)
        lines = [line.strip() for line in secret.splitlines()]
        if len(lines) > 1:  # a PEM key: each line alone, and the body on one line
            body = [line for line in lines if line and not line.startswith("-----")]
            for line in body:
                self._add_needle(line)
            self._add_needle("".join(body))

    def add_basic_auth(self, user: str, password: str) -> None:
        """Also scrub the base64 ``user:password`` of an HTTP Basic header."""
        self.add(password)
        if password:
            for form in _base64_forms(f"{user}:{password}"):
                self._add_needle(form)

    def _add_needle(self, needle: str) -> None:
        if len(needle) < MIN_SECRET or needle in self._needles:
            return
        self._needles.append(needle)
        # longest first, so that a secret containing another is removed whole
        self._needles.sort(key=len, reverse=True)
        self._patterns = [re.compile(_encoded_pattern(n)) for n in self._needles]

    def __call__(self, text: str) -> str:
        text = self._pem_continuation(text)
        for pattern in self._patterns:
            text = pattern.sub(REDACTED, text)
        for pattern, repl in _GENERIC:
            text = pattern.sub(repl, text)
        return self._pem_opening(text)

    def _pem_continuation(self, text: str) -> str:
        """Inside a PEM block begun in an earlier call: drop text up to its END line."""
        if self._pem_lines_left <= 0:
            return text
        end = _PEM_END.search(text)
        if end:
            self._pem_lines_left = 0
            return REDACTED + text[end.end():]
        self._pem_lines_left -= 1
        return REDACTED

    def _pem_opening(self, text: str) -> str:
        """A PEM block that begins here and does not end here: drop the rest, and
        what follows in the next calls until its END line."""
        begin = _PEM_BEGIN.search(text)
        if not begin:
            return text
        self._pem_lines_left = PEM_MAX_LINES
        return text[:begin.start()] + REDACTED
