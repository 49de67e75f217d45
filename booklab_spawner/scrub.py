"""The one place where secrets are removed from text before it is logged.

Every line that goes to a job log, and every runner log message that may carry
command output, passes through a :class:`Scrubber`.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import quote

REDACTED = "[secret]"

# credentials that may appear even when we were not told about them
_GENERIC = [
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)(authorization:\s*(?:basic|bearer|token)\s+)\S+"), r"\1" + REDACTED),
    (re.compile(r"(?i)((?:access_token|private_token|refresh_token|token)=)[^&\s\"']+"),
     r"\1" + REDACTED),
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{10,}"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
     REDACTED),
]


class Scrubber:
    """Replaces known secrets (and their common encodings) with ``[secret]``."""

    def __init__(self, secrets: list[str] | None = None):
        self._needles: list[str] = []
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < 6:
            return
        forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
        for form in forms:
            if form not in self._needles:
                self._needles.append(form)
        # longest first, so that a secret containing another is removed whole
        self._needles.sort(key=len, reverse=True)

    def add_basic_auth(self, user: str, password: str) -> None:
        """Also scrub the base64 ``user:password`` of an HTTP Basic header."""
        self.add(password)
        self.add(base64.b64encode(f"{user}:{password}".encode()).decode())

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        for pattern, repl in _GENERIC:
            text = pattern.sub(repl, text)
        return text
