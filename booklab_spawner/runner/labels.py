"""What a runner offers: the operator's labels and the facts it detects.

A runner declares free-form ``key=value`` labels (``--label gpu=a100 --label
site=basement``) and detects three facts from its Docker engine: ``cpus``,
``memory`` (bytes) and ``gpus`` (NVIDIA devices, when the engine has the
``nvidia`` runtime that Docker's ``--gpus`` device requests go through). Both
end up in the runner's record (``labels``, JSON) for the hub: the admin page
shows them, and launch profiles will match on them. An operator's label wins
over a detected fact of the same name (to offer less than the machine has).

Labels come from the operator's command line, but they are validated as any
input is: a key is lower-case letters, digits, ``.``, ``_`` and ``-``; a value
has no spaces, quotes or control characters.
"""

from __future__ import annotations

import glob
import re
from typing import Any

KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VALUE = re.compile(r"^[A-Za-z0-9._:/+@-]{0,128}$")
MAX_LABELS = 32
FACTS = ("cpus", "memory", "gpus")


def parse(items: list[str]) -> dict[str, str]:
    """``["gpu=a100", ...]`` -> ``{"gpu": "a100"}``; ValueError saying what is wrong."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"label {item!r} is not key=value")
        if not KEY.fullmatch(key):
            raise ValueError(f"label key {key!r}: lower-case letters, digits, '.', '_', "
                             "'-', at most 63 characters")
        if not VALUE.fullmatch(value):
            raise ValueError(f"label value {value!r} of {key!r}: letters, digits and "
                             "._:/+@- only, at most 128 characters")
        if key in labels and labels[key] != value:
            raise ValueError(f"label {key!r} given twice")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    return labels


def detect(engine: dict[str, Any], devices: str = "/dev/nvidia[0-9]*") -> dict[str, str]:
    """The facts of ``docker info`` (``engine``), plus the NVIDIA devices when the
    engine can hand them to containers."""
    facts = {"cpus": str(int(engine.get("NCPU") or 0)),
             "memory": str(int(engine.get("MemTotal") or 0)), "gpus": "0"}
    if "nvidia" in (engine.get("Runtimes") or {}):
        facts["gpus"] = str(len(glob.glob(devices)))
    return facts


def offered(operator: dict[str, str], facts: dict[str, str]) -> dict[str, str]:
    """What the runner publishes: the facts, then the operator's labels over them."""
    return {**facts, **operator}
