"""Read-only deploy keys: one fresh ed25519 key pair per launch.

The hub creates the pair, adds the public half to the project as a deploy key
that cannot push, and hands the private half to the runner encrypted (in the
job's ``token:<job>``). The key is deleted from GitLab as soon as the job's
fetch is over (the hub retries a failed delete); keys whose fetch is over but
which are still in GitLab (hub down at the time, user lost Maintainer) are
removed at the next launch of the project by a maintainer, and GitLab itself
refuses them after ``expires_at`` (a backstop). The sweep never touches a key
whose job is not in Redis yet but was created within ``NEW_KEY_GRACE``: a
concurrent launch adds its key a moment before it writes its job.

Every key's title names what created it, e.g.
``booklab: alice/hello-main-1a2b3c (job 20261127085042-1a2b3c4d5e6f)``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .exceptions import GitLabError
from .gitlab_api import GitLabClient
from .jobs import CLAIMED, FETCHING, QUEUED, JobStore

log = logging.getLogger(__name__)

TITLE_PREFIX = "booklab:"
_JOB_IN_TITLE = re.compile(r"\(job ([A-Za-z0-9][A-Za-z0-9._-]{0,127})\)$")
MAINTAINER = 40
KEY_LIFETIME = dt.timedelta(days=7)  # GitLab refuses the key afterwards, whatever happens
NEW_KEY_GRACE = dt.timedelta(minutes=10)  # a key this young without a job is a launch's
_NEEDS_KEY = (QUEUED, CLAIMED, FETCHING)  # job states in which the key is still needed


def generate_keypair() -> tuple[str, str]:
    """A new ed25519 pair: (private key in OpenSSH PEM, public key in authorized_keys form)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return pem, public


def title(user: str, server_name: str, job_id: str) -> str:
    server = f"{user}/{server_name}" if server_name else user
    return f"{TITLE_PREFIX} {server} (job {job_id})"


def job_of_title(key_title: str) -> str | None:
    """The job id a Booklab deploy key was created for, or None for other keys."""
    if not key_title.startswith(TITLE_PREFIX):
        return None
    m = _JOB_IN_TITLE.search(key_title)
    return m.group(1) if m else None


def access_level(project: dict) -> int:
    """The user's effective role on a project, from GitLab's ``permissions``."""
    perms = project.get("permissions") or {}
    levels = [(perms.get(k) or {}).get("access_level") or 0
              for k in ("project_access", "group_access")]
    return max(levels)


async def add(gitlab: GitLabClient, project_id: int | str, key_title: str,
              public_key: str) -> int:
    """Add a read-only deploy key; returns its id. Needs Maintainer and the api scope."""
    expires = (dt.datetime.now(dt.timezone.utc) + KEY_LIFETIME).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = await gitlab.add_deploy_key(project_id, key_title, public_key, expires)
    if data.get("can_push"):  # never trust a write key to a runner
        await remove(gitlab, project_id, data["id"])
        raise GitLabError("GitLab created the deploy key with write access", 0)
    return int(data["id"])


async def remove(gitlab: GitLabClient, project_id: int | str, key_id: int | str) -> bool:
    """Delete a deploy key from the project; True if it is gone (404: already gone)."""
    try:
        await gitlab.delete_deploy_key(project_id, key_id)
    except GitLabError as e:
        if e.status == 404:
            return True
        log.warning("Could not delete deploy key %s of project %s: %s", key_id, project_id, e)
        return False
    return True


def _key_age(key: dict, job_id: str, now: dt.datetime) -> dt.timedelta:
    """How old a key is: from its job id's timestamp (our clock), else GitLab's created_at."""
    try:
        born = dt.datetime.strptime(job_id[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        try:
            born = dt.datetime.fromisoformat(str(key.get("created_at")).replace("Z", "+00:00"))
        except ValueError:
            return dt.timedelta(0)  # unknown: treat as new, never remove on a guess
    return now - born


async def is_stale(key: dict, store: JobStore, now: dt.datetime | None = None) -> bool:
    """A Booklab key whose job's fetch is over (or whose job is gone and the key old)."""
    job_id = job_of_title(key.get("title", ""))
    if job_id is None:
        return False
    state = await store.state(job_id)
    if state is None:
        return _key_age(key, job_id, now or dt.datetime.now(dt.timezone.utc)) > NEW_KEY_GRACE
    return state not in _NEEDS_KEY


async def remove_stale(gitlab: GitLabClient, project_id: int | str, store: JobStore) -> int:
    """Delete the project's Booklab keys no launch needs any more; returns how many."""
    try:
        keys = await gitlab.deploy_keys(project_id)
    except GitLabError as e:
        log.info("Cannot list deploy keys of project %s: %s", project_id, e)
        return 0
    removed = 0
    for key in keys:
        if await is_stale(key, store) and await remove(gitlab, project_id, key["id"]):
            log.info("Removed stale deploy key %s (%s)", key["id"], key.get("title"))
            removed += 1
    return removed
