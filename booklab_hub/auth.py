"""BooklabGitLabAuthenticator: GitLab login that keeps the user's token for launches.

The token (in JupyterHub's encrypted auth state) is what the spawner uses to
check every launch against GitLab, to create a read-only deploy key, or to
clone the repository. What oauthenticator does not do, and Booklab needs:

- **expiry**: GitLab access tokens live about two hours and oauthenticator's
  ``refresh_user`` ignores ``expires_in``. We keep ``expires_at`` in the auth
  state and refresh with the refresh token *before* the token runs out, so a
  runner that clones some minutes later still holds a valid token.
- **subgroups**: upstream escapes group paths twice (oauthenticator#423), so
  members of ``group/sub`` were refused; we escape once.
- **projects by path**: ``allowed_projects`` takes ``group/project`` paths
  (or numeric ids); upstream's ``allowed_project_ids`` breaks on a slash.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

from oauthenticator.gitlab import GitLabOAuthenticator, _api_headers
from tornado.httpclient import HTTPClientError
from traitlets import Enum, Integer, Set, Unicode, default, validate

from booklab_hub.handlers import handlers_for

# what each clone method needs from GitLab (see docs/security.md)
SCOPES_TOKEN_CLONE = ["read_user", "read_api", "read_repository"]
# deploy keys are written through the API: only `api` allows it (it includes the rest)
SCOPES_DEPLOY_KEY = ["api"]
SCOPES = {"token": SCOPES_TOKEN_CLONE, "deploy_key": SCOPES_DEPLOY_KEY,
          "auto": SCOPES_DEPLOY_KEY}
DEVELOPER = 30


class BooklabGitLabAuthenticator(GitLabOAuthenticator):
    """GitLab OAuth for Booklab: auth state on, scopes matching the clone method."""

    login_service = Unicode("GitLab", config=True, help="Name on the login button.")

    clone_method = Enum(
        ["auto", "deploy_key", "token"], "auto", config=True,
        help="""How runners clone, which decides the OAuth scopes asked of GitLab:
        'deploy_key' and 'auto' need 'api' (deploy keys are created through the API);
        'token' needs 'read_user read_api read_repository'. BooklabSpawner reads it
        from here: 'deploy_key' gives every launch a fresh read-only deploy key, cloned
        over SSH and deleted when the fetch ends (the user needs Maintainer on the
        project); 'token' lets the runner fetch through the hub's read-only git proxy
        with a one-time secret bound to the job, the user's OAuth token never leaving
        the hub; 'auto' uses a deploy key for Maintainers when
        BooklabSpawner.ssh_known_hosts is set, the proxy for everyone else.""",
    )

    access_token_min_lifetime = Integer(
        1800, config=True,
        help="""Seconds the user's GitLab access token must still be valid before a
        launch or a stop; a token closer to its expiry is refreshed first with the
        refresh token (GitLab's tokens live 7200 s). The runner may clone with the
        token after the job waited in the queue, so keep this above queue_timeout.""",
    )

    @validate("access_token_min_lifetime")
    def _check_min_lifetime(self, proposal) -> int:
        if proposal.value < 0:
            raise ValueError("access_token_min_lifetime must not be negative")
        return proposal.value

    allowed_projects = Set(
        config=True,
        help="""Let members with Developer access or more of these GitLab projects log
        in. Project paths ('group/sub/project') or numeric ids.""",
    )

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        # the spawner needs the user's GitLab token: auth state is not optional
        return True

    @default("scope")
    def _scope_default(self) -> list[str]:
        return list(SCOPES[self.clone_method])

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        return True

    @default("refresh_pre_stop")
    def _refresh_pre_stop_default(self) -> bool:
        # the deploy key is deleted at stop with the user's token: keep it fresh
        return True

    def get_handlers(self, app) -> list[tuple]:
        """OAuth login/callback plus Booklab's own pages (picker, build log, admin)."""
        return super().get_handlers(app) + handlers_for(app)

    # -- token expiry -----------------------------------------------------------
    def build_auth_state_dict(self, token_info: dict, user_info: dict) -> dict:
        state = super().build_auth_state_dict(token_info, user_info)
        # GitLab sends created_at; keep our own when it does not, so that a later
        # refresh_user with the same token_response computes the same expiry
        created = token_info.setdefault("created_at", int(time.time()))
        expires_in = token_info.get("expires_in")
        state["expires_at"] = float(created) + float(expires_in) if expires_in else None
        return state

    def _expires_soon(self, auth_state: dict) -> bool:
        expires_at = auth_state.get("expires_at")
        return bool(expires_at) and expires_at - time.time() < self.access_token_min_lifetime

    def _user_lock(self, name: str) -> asyncio.Lock:
        # one refresh at a time per user: GitLab rotates the refresh token on use
        locks = self.__dict__.setdefault("_booklab_locks", {})
        return locks.setdefault(name, asyncio.Lock())

    async def refresh_user(self, user, handler=None, **kwargs):
        if handler is not None and not hasattr(handler, "_token_authenticated"):
            # JupyterHub 6.1 reads this attribute when a refresh fails, but sets it only
            # for token-authenticated requests: a browser session would get a 500 and
            # the spawn page would retry without the user's options
            handler._token_authenticated = False
        async with self._user_lock(user.name):
            auth_state = await user.get_auth_state()
            if auth_state and self._expires_soon(auth_state):
                return await self._refresh_tokens(user, auth_state, handler)
            try:
                return await super().refresh_user(user, handler, **kwargs)
            except HTTPClientError as e:
                if e.code < 500:  # GitLab's answer: the login is no longer good
                    raise
                # GitLab down (5xx, or 599: no answer): the token has not expired, so the
                # login stands until GitLab answers again; a stop (its autosave, its
                # deploy key) must not fail on it, and a launch asks GitLab itself
                self.log.warning("GitLab did not answer the login check of %s (%s): "
                                 "keeping the current login", user.name, e.code)
                return True

    async def fresh_token(self, user) -> str | None:
        """The user's GitLab access token, refreshed first if it expires soon.

        None when there is none or it cannot be refreshed: the user must log in again.
        """
        async with self._user_lock(user.name):
            auth_state = await user.get_auth_state() or {}
            if auth_state.get("access_token") and self._expires_soon(auth_state):
                model = await self._refresh_tokens(user, auth_state, None)
                auth_state = model["auth_state"] if model else {}
            return auth_state.get("access_token")

    async def _refresh_tokens(self, user, auth_state: dict, handler) -> dict | bool:
        """Trade the refresh token for a new pair; saved at once (the old pair is dead)."""
        refresh_token = auth_state.get("refresh_token")
        if not refresh_token:
            self.log.info("No refresh token for %s: a new login is needed", user.name)
            return False
        params = self.build_refresh_token_request_params(refresh_token)
        try:
            token_info = await self.get_token_info(handler, params)
            model = await self._token_to_auth_model(token_info)
        except (HTTPClientError, OSError, ValueError, KeyError) as e:
            self.log.info("Refreshing the GitLab token of %s failed (%s): a new login "
                          "is needed", user.name, type(e).__name__)
            return False
        if model["name"] != user.name:
            self.log.warning("Refreshed token of %s belongs to %s", user.name, model["name"])
            return False
        await user.save_auth_state(model["auth_state"])
        self.log.info("Refreshed the GitLab token of %s before it expires", user.name)
        return model

    # -- allowed groups and projects ------------------------------------------------
    async def check_allowed(self, username: str, auth_model: dict) -> bool:
        if await super().check_allowed(username, auth_model):
            return True
        if not self.allowed_projects:
            return False
        state = auth_model["auth_state"]
        return await self._member_of_any(
            "projects", self.allowed_projects, state[self.user_auth_state_key]["id"],
            state["token_response"]["access_token"], min_level=DEVELOPER)

    async def _check_membership_allowed_groups(self, user_id, access_token) -> bool:
        # replaces upstream's, which escapes "group/sub" twice (oauthenticator#423)
        return await self._member_of_any("groups", self.allowed_gitlab_groups, user_id,
                                         access_token, min_level=1)

    async def member_of_groups(self, user, paths) -> bool:
        """Whether ``user`` is a member (inherited included) of any GitLab group of
        ``paths``, asked of GitLab with their own token (launch profiles' ``groups``)."""
        token = await self.fresh_token(user)
        auth_state = await user.get_auth_state() or {}
        user_id = (auth_state.get(self.user_auth_state_key) or {}).get("id")
        if not token or user_id is None:
            return False
        return await self._member_of_any("groups", paths, user_id, token, min_level=1)

    async def _member_of_any(self, kind: str, paths, user_id: int, access_token: str,
                             min_level: int) -> bool:
        """Whether the user is a member (inherited included) of any of ``paths``."""
        await self._set_gitlab_version(access_token)
        for path in sorted(str(p) for p in paths):
            url = (f"{self.gitlab_api}/{kind}/{quote(path.strip('/'), safe='')}/members/"
                   f"{self.member_api_variant}{int(user_id)}")
            member = await self.httpfetch(url, raise_error=False, method="GET",
                                          headers=_api_headers(access_token),
                                          validate_cert=self.validate_server_cert)
            if isinstance(member, dict) and member.get("access_level", 0) >= min_level:
                return True
        return False
