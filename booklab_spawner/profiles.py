"""Launch profiles: what a launch asks of a runner, and who may ask for it.

The operator lists profiles in ``config.yml`` (``profiles:``); each names the runner
labels it needs (``gpu: a100``), the container's limits and GPU request, and the
GitLab groups whose members may use it (none: everybody). A launch names one in
``user_options["profile"]`` (the picker, ``?profile=gpu`` on a launch link, the
REST API); none means :data:`DEFAULT_PROFILE`, which needs no label and is there
even when the operator lists none (they may redefine it by name).

Every profile has its own queue (``Keys.queue_of``): a runner claims from the
queues of the profiles its labels satisfy (:func:`served_by`), in the order they
are listed, the default last (docs/runner.md, "Labels and profiles").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .keys import DEFAULT_PROFILE
from .runner.labels import KEY as LABEL_KEY
from .runner.labels import VALUE as LABEL_VALUE

NAME = re.compile(r"^[a-z][a-z0-9-]{0,29}$")  # as JupyterHub's server names
_MEM = re.compile(r"^[0-9]+(\.[0-9]+)?[KMGT]?$")
_FIELDS = {"name", "description", "labels", "mem_limit", "cpu_limit", "gpus", "groups",
           "max_per_user"}
MAX_PROFILES = 50


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # runner labels it needs
    mem_limit: str = ""  # e.g. "8G" ("": the hub's runners.mem_limit)
    cpu_limit: float = 0.0  # 0: the hub's runners.cpu_limit
    gpus: str = ""  # "": none; a count such as "1"; or "all"
    groups: tuple[str, ...] = ()  # GitLab groups allowed (empty: everybody)
    max_per_user: int = 0  # servers of this profile one person may run at once (0: any)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "groups": list(self.groups)}

    def gpu_count(self) -> int:
        """GPUs a runner needs at least for this profile (1 for "all")."""
        return 0 if not self.gpus else 1 if self.gpus == "all" else int(self.gpus)

    def satisfied_by(self, offered: dict[str, str]) -> bool:
        """Do a runner's labels (``labels.offered``) satisfy this profile? Every label
        equal, and at least :meth:`gpu_count` GPUs detected."""
        if any(offered.get(k) != v for k, v in self.labels.items()):
            return False
        if self.gpu_count():
            try:
                return int(offered.get("gpus") or 0) >= self.gpu_count()
            except ValueError:
                return False
        return True


DEFAULT = Profile(DEFAULT_PROFILE, "Default: any runner")


def parse_one(raw: Any) -> Profile:
    """One profile from config.yml; ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("each profile is a mapping with a name")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        known = ", ".join(sorted(_FIELDS))
        raise ValueError(f"unknown profile key {unknown[0]!r} (known: {known})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"profile name {name!r}: 1-30 of a-z, 0-9 and -, starting with a letter")
    where = f"profile {name!r}"
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"{where}: labels must be a mapping such as {{gpu: a100}}")
    labels = {str(k): str(v) for k, v in labels.items()}
    for k, v in labels.items():
        if not LABEL_KEY.fullmatch(k) or not LABEL_VALUE.fullmatch(v):
            raise ValueError(f"{where}: label {k}={v} is not a valid runner label")
    mem = str(raw.get("mem_limit") or "").upper()
    if mem and not _MEM.fullmatch(mem):
        raise ValueError(f"{where}: mem_limit {mem!r} must be bytes or e.g. 8G")
    try:
        cpu = float(raw.get("cpu_limit") or 0)
        per_user = int(raw.get("max_per_user") or 0)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: cpu_limit is a number, max_per_user a count") from None
    if cpu < 0 or per_user < 0:
        raise ValueError(f"{where}: cpu_limit and max_per_user must not be negative")
    gpus = str(raw.get("gpus") or "")
    if gpus and gpus != "all" and not (gpus.isdigit() and 0 < int(gpus) <= 64):
        raise ValueError(f"{where}: gpus is a count (1-64) or 'all'")
    groups = raw.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError(f"{where}: groups is a list of GitLab group paths")
    description = raw.get("description") or ""
    if not isinstance(description, str) or len(description) > 200:
        raise ValueError(f"{where}: description is text of at most 200 characters")
    return Profile(name, description, labels, mem, cpu, gpus, tuple(groups), per_user)


def parse(items: Any) -> list[Profile]:
    """The operator's list, with the default profile first (theirs if they define
    one named ``default``); ValueError saying what is wrong."""
    if not isinstance(items, list):
        raise ValueError("profiles is a list of mappings")
    if len(items) > MAX_PROFILES:
        raise ValueError(f"at most {MAX_PROFILES} profiles")
    out = [parse_one(raw) for raw in items]
    names = [p.name for p in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"profile {twice[0]!r} is defined twice")
    default = next((p for p in out if p.name == DEFAULT_PROFILE), DEFAULT)
    return [default, *(p for p in out if p.name != DEFAULT_PROFILE)]


def served_by(profiles: Iterable[Profile], offered: dict[str, str]) -> list[str]:
    """The names of the profiles a runner with labels ``offered`` can serve, in the
    order it claims them: the operator's profiles as listed, the default last."""
    names = [p.name for p in profiles if p.name != DEFAULT_PROFILE and p.satisfied_by(offered)]
    default = next((p for p in profiles if p.name == DEFAULT_PROFILE), DEFAULT)
    return names + ([DEFAULT_PROFILE] if default.satisfied_by(offered) else [])


def job_needs(job: dict[str, str]) -> Profile:
    """What a job record asks of its runner (fields ``profile``, ``labels``, ``gpus``);
    ValueError when the record's values are not a profile's."""
    try:
        labels = json.loads(job.get("labels") or "{}")
    except ValueError:
        raise ValueError("the job's labels are not JSON") from None
    return parse_one({"name": job.get("profile") or DEFAULT_PROFILE, "labels": labels,
                      "gpus": job.get("gpus") or ""})
