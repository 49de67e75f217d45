"""Clone credentials for a launch, and the error a user sees when a launch fails.

A runner only ever holds a read-only credential, and only for the fetch. A
Maintainer's launch gets a fresh read-only deploy key (``deploykeys``) when the
hub knows GitLab's SSH host key; anyone else fetches through the hub's read-only
git proxy (``booklab_hub/handlers/gitproxy.py``) with a one-time secret bound to
the job: the user's OAuth token (which can write) never leaves the hub.

Both end with the fetch: as soon as the job's log shows it past ``fetching``
the hub deletes the proxy grant and the deploy key (retrying a failed delete);
``poll()``/``stop()`` release the key too when a launch fails earlier, and the
next launch of the project sweeps keys whose job is over.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from urllib.parse import urlsplit

from tornado import web

from . import deploykeys
from .crypto import SecretBox
from .exceptions import BooklabError, GitLabError
from .gitlab_api import GitLabClient
from .jobs import CLONE_RENEWED
from .keys import Keys

RELEASE_DELAYS = (1, 2, 4, 8)  # seconds between attempts to delete a deploy key


async def registered_host(redis, keys: Keys, runner_id: str) -> str | None:
    """The advertised host of a registered runner, None if it is not registered."""
    if not await redis.sismember(keys.runners, runner_id):
        return None
    return await redis.hget(keys.runner(runner_id), "host") or None


def url_on_host(url: str, host: str) -> bool:
    """An http(s) URL without credentials whose host is exactly ``host``."""
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and not parts.username and not parts.password
            and hostname is not None and hostname == host.strip("[]").lower())


def grant_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SpawnFailed(web.HTTPError):
    """A launch failed for a reason the user can read on the spawn page.

    An HTTPError so that the REST API answers with ``status`` (400 for refused
    input) and JupyterHub shows ``jupyterhub_message`` on the spawn page.
    """

    def __init__(self, message: str, status: int = 500):
        super().__init__(status, message.replace("%", "%%"))
        self.jupyterhub_message = message

    def __str__(self) -> str:
        return self.jupyterhub_message


class CloneCredentials:
    """Mixin for BooklabSpawner: the user's token, and the deploy key's lifecycle."""

    async def _gitlab_token(self) -> tuple[str, list[str]]:
        """The user's GitLab token (refreshed if it expires soon) and its scopes."""
        fresh = getattr(self.authenticator, "fresh_token", None)
        token = await fresh(self.user) if fresh else None
        auth_state = await self.user.get_auth_state() or {}
        token = token or auth_state.get("access_token")
        if not token:
            raise SpawnFailed("Booklab has no valid GitLab token for you: log out and "
                              "log in again", 403)
        scopes = auth_state.get("scope") or []
        return token, scopes if isinstance(scopes, list) else str(scopes).split()

    async def _clone_credential(self, gitlab: GitLabClient, project: dict, job_id: str,
                                token: str, scopes: list[str]) -> tuple[dict, int | None]:
        """A read-only deploy key when allowed and possible, else a proxy grant."""
        if not await self._use_deploy_key(gitlab, project, scopes):
            return await self._proxy_grant(job_id), None
        await deploykeys.remove_stale(gitlab, project["id"], self.store)
        private, public = await asyncio.to_thread(deploykeys.generate_keypair)
        title = deploykeys.title(self.user.name, self.name, job_id)
        try:
            key_id = await deploykeys.add(gitlab, project["id"], title, public)
        except GitLabError as e:
            self.log.warning("Deploy key for %s refused: %s", project["path_with_namespace"], e)
            if self.clone_method == "auto":
                return await self._proxy_grant(job_id), None
            raise SpawnFailed(f"GitLab refused to add a read-only deploy key to "
                              f"{project['path_with_namespace']} ({e})", 403) from None
        self.log.info("Added deploy key %s (%s)", key_id, title)
        return {"method": "ssh", "private_key": private}, key_id

    async def _proxy_grant(self, job_id: str) -> dict:
        """A one-time secret for the hub's read-only git proxy, stored hashed."""
        secret = secrets.token_urlsafe(32)
        ttl = self.queue_timeout + self.build_timeout
        await self.store.grant_fetch(job_id, grant_hash(secret), ttl)
        return {"method": "proxy", "secret": secret}

    def _fetch_over(self, job_id: str) -> None:
        """The job left ``fetching``: drop its proxy grant and deploy key now (once)."""
        if getattr(self, "_fetch_closed", None) == job_id:
            return
        self._fetch_closed = job_id
        task = asyncio.ensure_future(self._end_fetch_credentials(job_id))
        self._cleanup_task = task  # keep a reference until it is done

    async def _renew_clone(self, job_id: str) -> None:
        """The job was handed back after its fetch (its runner stopped): give the next
        runner a fresh credential of the same kind, then say so in the job's log."""
        task = getattr(self, "_cleanup_task", None)
        if task is not None:
            await asyncio.wait([task])  # the old grant and key go first
        self._fetch_closed = None
        try:
            job = await self.store.get(job_id)
            box = SecretBox(self.runner_token)
            sealed = box.open(await self.store.secrets(job_id) or "", job)
            rest = {k: v for k, v in sealed.items() if k not in ("job", "bound")}
            if job.get("clone_method") == "ssh":
                rest["clone"] = await self._new_deploy_key(job)
            else:
                rest["clone"] = await self._proxy_grant(job_id)
            await self.store.replace_secrets(job_id, box.seal(job_id, job, rest))
        except BooklabError as e:
            self.log.warning("Could not renew the clone credential of job %s: %s", job_id, e)
            return
        await self.store.log(job_id, "The hub renewed the clone credential for another "
                             "fetch", CLONE_RENEWED)

    async def _new_deploy_key(self, job: dict[str, str]) -> dict:
        token, _ = await self._gitlab_token()
        gitlab = GitLabClient(self.gitlab_url, token)
        private, public = await asyncio.to_thread(deploykeys.generate_keypair)
        key_id = await deploykeys.add(gitlab, job["project_id"],
                                      deploykeys.title(self.user.name, self.name, job["id"]),
                                      public)
        await self.store.note(job["id"], deploy_key_id=str(key_id))
        self._released = None
        return {"method": "ssh", "private_key": private}

    async def _end_fetch_credentials(self, job_id: str) -> None:
        try:
            await self.store.revoke_fetch(job_id)
            job = await self.store.find(job_id)
            await self._release_deploy_key(job)
        except Exception:  # best effort: poll/stop and the stale sweep come later
            self.log.exception("Ending the fetch credentials of job %s failed", job_id)

    async def _use_deploy_key(self, gitlab: GitLabClient, project: dict,
                              scopes: list[str]) -> bool:
        if self.clone_method == "token":
            return False
        # without GitLab's SSH host key a runner cannot verify the server it would
        # clone from, and the fetch would fail: 'auto' clones through the proxy then
        if self.clone_method == "auto" and not self.ssh_known_hosts.strip():
            return False
        maintainer = await self._role(gitlab, project) >= deploykeys.MAINTAINER
        possible = maintainer and "api" in scopes and bool(project.get("ssh_url_to_repo"))
        if possible or self.clone_method == "auto":
            return possible
        path = project["path_with_namespace"]
        if not maintainer:
            raise SpawnFailed(
                f"This hub clones with read-only deploy keys, which need the Maintainer role "
                f"on {path}: ask a maintainer of {path} to launch it for you, or the hub's "
                "operator to allow token cloning (gitlab.clone_method: auto)", 403)
        raise SpawnFailed("Your GitLab login lacks the 'api' scope needed for deploy keys: "
                          "log out and log in again", 403)

    async def _role(self, gitlab: GitLabClient, project: dict) -> int:
        """The user's effective role on the project. GitLab's ``permissions`` hold only
        the user's own membership and that in the project's group hierarchy; a role
        through a group the project is shared with shows only in ``members/all``,
        asked when ``permissions`` say less than Maintainer."""
        level = deploykeys.access_level(project)
        if level >= deploykeys.MAINTAINER:
            return level
        auth_state = await self.user.get_auth_state() or {}
        key = getattr(self.authenticator, "user_auth_state_key", "gitlab_user")
        user_id = (auth_state.get(key) or {}).get("id")
        if user_id is None:
            return level
        try:
            return max(level, await gitlab.member_access(project["id"], user_id))
        except GitLabError as e:
            raise SpawnFailed(f"GitLab did not tell your role on "
                              f"{project['path_with_namespace']} ({e})", 502) from None

    async def _release_deploy_key(self, job: dict[str, str] | None = None) -> None:
        """Delete the job's deploy key with the user's (refreshed) token, retrying a
        failed delete a few times; once deleted, later calls do nothing."""
        if job is None:
            job = await self.store.find(self.job_id) if self.job_id else {}
        if not job.get("deploy_key_id") or getattr(self, "_released", None) == job["id"]:
            return
        for delay in (*RELEASE_DELAYS, None):
            try:
                token, _ = await self._gitlab_token()
            except SpawnFailed:
                self.log.warning("No GitLab token for %s: deploy key %s of job %s stays "
                                 "until the next cleanup", self._log_name,
                                 job["deploy_key_id"], job["id"])
                return
            gitlab = GitLabClient(self.gitlab_url, token)
            if await deploykeys.remove(gitlab, job["project_id"], job["deploy_key_id"]):
                self._released = job["id"]
                self.log.info("Removed deploy key %s of job %s", job["deploy_key_id"],
                              job["id"])
                return
            if delay is None:
                break
            self.log.info("Retrying the removal of deploy key %s in %s s",
                          job["deploy_key_id"], delay)
            await asyncio.sleep(delay)
        self.log.warning("Deploy key %s of job %s stays until the next launch of the "
                         "project sweeps it", job["deploy_key_id"], job["id"])
