"""Save to GitLab: ``GET /hub/booklab/api/save/<server>`` previews the files changed since
the launch, ``POST`` (JSON ``{"branch": ..., "message": ...}``) commits them.

A request needs JupyterHub's ``servers`` scope on that server (a browser session and
a user's ordinary API token have it; the notebook's own token does not). Only the
server's owner may save it, admins included: the commit is made with the
owner's GitLab token, so an admin saving someone else's server would push in their
name. Another person's server answers 404, as one that does not exist.
"""

from __future__ import annotations

import io
import json
import zipfile

from jupyterhub import orm
from tornado import web

from booklab_spawner.exceptions import GitLabError, JobNotFound

from ..save import (
    BooklabSaver,
    Launched,
    Plan,
    SaveError,
    SaveRun,
    ServerFiles,
    checked_branch,
    checked_message,
    default_branch,
)
from ..save_gitlab import SaveGitLab
from .base import BooklabHandler, gitlab_status
from .picker import JSONHandler

NO_SERVER = "You have no running server with that name"


class SaveMixin:
    """What the save API and page share: whose server, the launch, one run."""

    def initialize(self, booklab, saver: BooklabSaver) -> None:
        super().initialize(booklab)
        self.saver = saver

    def own_server(self, name: str):
        user = self.current_user
        spawner = user.spawners.get(name)  # dict.get: never makes a new spawner
        if spawner is None or not spawner.ready or spawner.server is None:
            raise web.HTTPError(404, NO_SERVER)
        # saving is managing the server (JupyterHub's `servers` scope): the notebook's own
        # token (access:servers only) must not push its user's files to GitLab
        if not self.get_scope_filter("servers")(spawner.orm_spawner, kind="server"):
            raise web.HTTPError(403, "This token may not save servers: it needs the "
                                     "'servers' scope")
        return user, spawner

    async def archive(self, user, spawner) -> bytes:
        """The files changed since the launch as a zip (created and updated files, and
        ``DELETED.txt`` naming the deleted ones): for people who cannot push."""
        launched = await self._launched(user, spawner)
        gitlab = SaveGitLab(self.booklab.gitlab_url, await self._gitlab_token(user))
        token = self._server_token(user, spawner)
        try:
            run = SaveRun(gitlab, ServerFiles(spawner.server.url, token, self.saver.limits()),
                          launched)
            plan, _, _ = await run.preview()
        finally:
            self._delete_token(token)
        return zipped(plan)

    def _server_token(self, user, spawner) -> str:
        return user.new_api_token(
            scopes=[f"access:servers!server={user.name}/{spawner.name}"],
            expires_in=self.saver.token_lifetime, note="booklab save (deleted after)")

    async def run_save(self, user, spawner, body: dict | None) -> dict:
        """The preview (``body`` None) or the result of a save, as JSON-ready data;
        raises ``SaveError`` or ``GitLabError`` with a message for the person."""
        launched = await self._launched(user, spawner)
        if body is not None:  # checked before anything is read
            branch = checked_branch(body.get("branch") or default_branch(user.name,
                                                                         spawner.name))
            message = checked_message(body.get("message"), default_message(spawner.name))
        gitlab = SaveGitLab(self.booklab.gitlab_url, await self._gitlab_token(user))
        token = self._server_token(user, spawner)
        try:
            run = SaveRun(gitlab, ServerFiles(spawner.server.url, token, self.saver.limits()),
                          launched)
            if body is None:
                plan, _, _ = await run.preview()
                return {"project": launched.project, "sha": launched.sha,
                        "branch": default_branch(user.name, spawner.name),
                        "message": default_message(spawner.name),
                        "files": [c.public() for c in plan.changes],
                        "skipped": plan.skipped}
            result = await run.save(branch, message)
        finally:
            self._delete_token(token)
        self.log.info("Saved %s/%s to %s@%s (%s)", user.name, spawner.name, launched.project,
                      result.branch, result.commit)
        return result.public()

    def _delete_token(self, token: str) -> None:
        found = orm.APIToken.find(self.db, token)
        if found is not None:
            self.db.delete(found)
            self.db.commit()

    async def _launched(self, user, spawner) -> Launched:
        job_id = getattr(spawner, "job_id", None)
        try:
            job = await self.store.get(job_id) if job_id else None
        except (JobNotFound, ValueError):
            job = None
        # the record is the hub's own (signed for the runners); still, it must be this
        # server's before its project is written to
        lost = SaveError("Booklab no longer knows what this server was launched from", 409)
        if not job or job.get("user") != user.name or job.get("server_name") != spawner.name:
            raise lost
        if not (job.get("project_id") or "").isdigit() or len(job.get("sha") or "") != 40:
            raise lost
        return Launched(job["project"], job["project_id"], job["sha"])

    async def _gitlab_token(self, user) -> str:
        fresh = getattr(self.authenticator, "fresh_token", None)
        if fresh is not None:  # None from it: the refresh failed, the old token is no use
            token = await fresh(user)
        else:
            token = (await user.get_auth_state() or {}).get("access_token")
        if not token:
            raise GitLabError("Booklab has no GitLab token for you: log out and log in again",
                              401)
        return token


def zipped(plan: Plan) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for change in plan.changes:
            if change.data is not None:
                zf.writestr(change.path, change.data)
        deleted = [c.path for c in plan.changes if c.action == "delete"]
        if deleted:
            zf.writestr("DELETED.txt", "".join(f"{p}\n" for p in deleted))
    return buf.getvalue()


def default_message(server: str) -> str:
    return f"Save from Booklab server {server}"


class SaveAPIHandler(SaveMixin, JSONHandler):
    # a REST endpoint: API tokens too (then JupyterHub skips the XSRF check, which
    # cookie-authenticated POSTs pass as every page's form does)
    _accept_token_auth = True

    async def get(self, name: str) -> None:
        user, spawner = self.own_server(name)
        await self._answer(user, spawner, None)

    async def post(self, name: str) -> None:
        user, spawner = self.own_server(name)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "The body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The body must be a JSON object")
        await self._answer(user, spawner, body)

    async def _answer(self, user, spawner, body: dict | None) -> None:
        try:
            data = await self.run_save(user, spawner, body)
        except SaveError as e:
            self.set_status(e.status)
            return self.finish({"error": str(e)})
        except GitLabError as e:
            return self.gitlab_failed(e)
        self.finish(data)


class SaveArchiveHandler(SaveMixin, BooklabHandler):
    """GET: the changes as ``<server>-changes.zip`` (also when GitLab refuses a push)."""

    _accept_token_auth = True

    @web.authenticated
    async def get(self, name: str) -> None:
        user, spawner = self.own_server(name)
        try:
            data = await self.archive(user, spawner)
        except (SaveError, GitLabError) as e:
            self.set_status(e.status if isinstance(e, SaveError) else gitlab_status(e))
            self.set_header("Content-Type", "application/json")
            return self.finish(json.dumps({"error": str(e)}))
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition",
                        f'attachment; filename="{spawner.name}-changes.zip"')
        self.finish(data)


class SavePageHandler(SaveMixin, BooklabHandler):
    """The "Save to GitLab" page: the changed files to review, branch and message to
    edit (GET); the save and its links into GitLab (POST, with the hub's _xsrf)."""

    @web.authenticated
    async def get(self, name: str) -> None:
        user, spawner = self.own_server(name)
        await self._page(user, spawner, None)

    @web.authenticated
    async def post(self, name: str) -> None:
        user, spawner = self.own_server(name)
        body = {"branch": self.get_body_argument("branch", "").strip(),
                "message": self.get_body_argument("message", "").strip()}
        await self._page(user, spawner, body)

    async def _page(self, user, spawner, body: dict | None) -> None:
        preview = result = error = None
        try:
            data = await self.run_save(user, spawner, body)
            preview, result = (data, None) if body is None else (None, data)
        except (SaveError, GitLabError) as e:
            error = str(e)
            self.set_status(e.status if isinstance(e, SaveError) else gitlab_status(e))
        await self.render_page("save.html", server=spawner.name, preview=preview,
                               result=result, error=error, asked=body or {})
