"""Traits of Booklab's own, so that a runner needs no JupyterHub installed."""

from __future__ import annotations

import re

from traitlets import Integer, TraitError

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``512M``, ``2G``, ``1.5T`` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size in bytes or with a K/M/G/T suffix")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


class ByteSize(Integer):
    """A size in bytes, configurable as a number or with a K/M/G/T suffix (e.g. ``50G``)."""

    info_text = "a size in bytes, or a number with a K/M/G/T suffix (e.g. 2G)"

    def validate(self, obj, value):
        try:
            return parse_size(value)
        except ValueError as e:
            raise TraitError(f"{self.name}: {e}") from None

    def from_string(self, s: str) -> int:
        return self.validate(None, s)
