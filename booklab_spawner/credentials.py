"""Clone credentials for a launch, and the error a user sees when a launch fails.

A Maintainer's launch gets a fresh read-only deploy key (``deploykeys``) when the
hub knows GitLab's SSH host key; anyone else clones with their own short-lived
OAuth token (``clone_method: auto``). The
key is released when the job ends, whichever way it ends: JupyterHub calls
``stop()`` only for a server that ``poll()`` still reports running, so a failed
start and a dead container release it too.
"""

from __future__ import annotations

import asyncio

from tornado import web

from . import deploykeys
from .exceptions import GitLabError
from .gitlab import GitLabClient


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
        """A read-only deploy key when allowed and possible, else the user's token."""
        if not self._use_deploy_key(project, scopes):
            return {"method": "token", "username": "oauth2", "password": token}, None
        await deploykeys.remove_stale(gitlab, project["id"], self.store)
        private, public = await asyncio.to_thread(deploykeys.generate_keypair)
        title = deploykeys.title(self.user.name, self.name, job_id)
        try:
            key_id = await deploykeys.add(gitlab, project["id"], title, public)
        except GitLabError as e:
            self.log.warning("Deploy key for %s refused: %s", project["path_with_namespace"], e)
            if self.clone_method == "auto":
                return {"method": "token", "username": "oauth2", "password": token}, None
            raise SpawnFailed(f"GitLab refused to add a read-only deploy key to "
                              f"{project['path_with_namespace']} ({e})", 403) from None
        self.log.info("Added deploy key %s (%s)", key_id, title)
        return {"method": "ssh", "private_key": private}, key_id

    def _use_deploy_key(self, project: dict, scopes: list[str]) -> bool:
        if self.clone_method == "token":
            return False
        maintainer = deploykeys.access_level(project) >= deploykeys.MAINTAINER
        possible = maintainer and "api" in scopes and bool(project.get("ssh_url_to_repo"))
        if self.clone_method == "auto":
            # without GitLab's SSH host key a runner cannot verify the server it
            # would clone from, and the fetch would fail: clone with the token then
            return possible and bool(self.ssh_known_hosts.strip())
        if possible:
            return True
        path = project["path_with_namespace"]
        if not maintainer:
            raise SpawnFailed(
                f"This hub clones with read-only deploy keys, which need the Maintainer role "
                f"on {path}: ask a maintainer of {path} to launch it for you, or the hub's "
                "operator to allow token cloning (gitlab.clone_method: auto)", 403)
        raise SpawnFailed("Your GitLab login lacks the 'api' scope needed for deploy keys: "
                          "log out and log in again", 403)

    async def _release_deploy_key(self, job: dict[str, str] | None = None) -> None:
        """Delete the job's deploy key (once) with the user's (refreshed) token."""
        if job is None:
            job = await self.store.redis.hgetall(self.keys.job(self.job_id)) if self.job_id \
                else {}
        if not job.get("deploy_key_id") or getattr(self, "_released", None) == job["id"]:
            return
        self._released = job["id"]
        try:
            token, _ = await self._gitlab_token()
        except SpawnFailed:
            self.log.warning("No GitLab token for %s: deploy key %s of job %s stays until "
                             "the next cleanup", self._log_name, job["deploy_key_id"], job["id"])
            return
        gitlab = GitLabClient(self.gitlab_url, token)
        if await deploykeys.remove(gitlab, job["project_id"], job["deploy_key_id"]):
            self.log.info("Removed deploy key %s of job %s", job["deploy_key_id"], job["id"])
