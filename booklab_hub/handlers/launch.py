"""Starting a named server for (project, ref): the picker's form and launch links.

Launch links are Binder-compatible::

    /hub/booklab/v2/gl/<url-escaped project path>/<ref>?labpath=notebook.ipynb

Both paths validate their input, start the server through JupyterHub (so
its state, the proxy and the spawn-pending machinery stay the hub's) and send
the person to the build-log page, which follows them into the server when it
is ready.

A launch link is a plain GET that any other site can make a logged-in
browser follow, so a GET never builds or starts anything: it shows what would
be launched with a button that POSTs back (with JupyterHub's XSRF token), and
only that POST launches. A server that already runs is opened directly (that
starts nothing). The picker launches with its own POST form.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote, urlencode

from jupyterhub.utils import url_path_join
from tornado import web

from booklab_spawner import validate as check
from booklab_spawner.exceptions import InvalidInput
from booklab_spawner.launch_events import launch_error_message
from booklab_spawner.names import server_name

from .base import BooklabHandler

# how long a launch request waits for the job to be queued (or for an early
# failure: GitLab refusing the ref, ...) before it sends the person to the
# build page; the spawn goes on regardless
EARLY_FAILURE_WAIT = 3.0


def target_path(urlpath: str = "", labpath: str = "", filepath: str = "") -> str:
    """Where to go inside the server once it is ready, relative to its root.

    Binder's parameters: ``urlpath`` as given, ``labpath``/``filepath`` open
    that file in JupyterLab. Refuses paths that try to leave the server
    (see ``validate.server_path``).
    """
    if urlpath:
        path = urlpath
    elif labpath or filepath:
        path = "lab/tree/" + (labpath or filepath).lstrip("/")
    else:
        return ""
    return check.server_path(path)  # also encoded '..', '//host', 'javascript:'


class LaunchMixin(BooklabHandler):
    """Start (or find) the server for (project, ref) and say where to send the person."""

    def existing_url(self, project: str, ref: str, target: str = "") -> str | None:
        """Where to go without starting anything: the running (or starting) server."""
        user = self.current_user
        name = server_name(project, ref)
        if name not in user.orm_spawners:
            return None
        spawner = user.spawners[name]  # (loads it after a hub restart; .get() would not)
        if spawner.ready:
            return self.server_url(user, name, target)
        if spawner.pending == "spawn":
            if spawner.job_id:
                return self.job_page_url(spawner.job_id, target)
            return self.build_page_url(user.name, name, target)
        return None

    def server_url(self, user, name: str, target: str = "") -> str:
        """The server's address; on the user's own host when subdomain_host is set."""
        return url_path_join(user.server_url(name), target)

    async def launch(self, project: str, ref: str, target: str = "", profile: str = "",
                     autosave: bool = True) -> str:
        """Returns the URL to redirect to; raises InvalidInput with a readable message.
        ``profile``: the launch profile (the spawner checks it; "": the default);
        ``autosave``: False opts this server out of autosave at stop."""
        project, ref = check.project_path(project), check.ref(ref)
        user = self.current_user
        name = server_name(project, ref)
        await self._make_room(user, name)
        try:
            await self._check_named_server_request(user, name, name)
        except web.HTTPError as e:
            raise InvalidInput(launch_error_message(e)) from None
        spawner = user.get_or_create_spawner(name, f"{project}@{ref}"[:255],
                                             replace_failed=True)
        if spawner.ready:
            return self.server_url(user, name, target)
        if spawner.pending == "stop":
            raise InvalidInput("This server is still stopping; try again in a moment")
        job_id = spawner.job_id if spawner.pending else None
        if not spawner.pending:
            options = {"project": project, "ref": ref, **({"profile": profile} if profile else {}),
                       **({} if autosave else {"autosave": False})}
            job_id = await self._start(user, spawner, options)
        if job_id:
            return self.job_page_url(job_id, target)
        return self.build_page_url(user.name, name, target)

    async def _make_room(self, user, name: str) -> None:
        """Hold the person to named_server_limit_per_user servers that run or start.

        JupyterHub counts every named server it stores, stopped ones too. A
        stopped Booklab server holds nothing (its container is gone, its log
        stays in Redis), so stopped ones are removed to make room for a launch.
        """
        limit = await self.get_current_user_named_server_limit()
        if limit <= 0 or name in user.orm_spawners:
            return
        names = [n for n in user.orm_spawners if n]
        if len(names) < limit:
            return
        live = [n for n in names if user.spawners[n].active]
        if len(live) >= limit:
            raise InvalidInput(
                f"You already have {len(live)} servers running or starting, the most "
                f"this hub allows at a time ({limit}): stop one on the Booklab page, "
                "then launch again")
        for n in names:
            spawner = user.spawners[n]
            if not spawner.active:
                self.log.info("Removing %s's stopped server %s to make room", user.name, n)
                await user._delete_spawner(spawner)
                self.db.delete(spawner.orm_spawner)
                user.spawners.pop(n, None)
        self.db.commit()

    async def _start(self, user, spawner, options: dict[str, str]) -> str | None:
        """Start the spawn; wait briefly for its job id, or for an early failure."""
        spawn = asyncio.ensure_future(
            self.spawn_single_user(user, spawner.name, options=options))
        spawner.launch_requested(spawn)  # the build page waits on it from now on
        job_id = await spawner.wait_for_job(EARLY_FAILURE_WAIT)
        if spawn.done() and not spawn.cancelled() and spawn.exception() is not None \
                and not job_id:
            exc = spawn.exception()
            self.log.warning("Launch of %s failed: %s", spawner._log_name, exc)
            raise InvalidInput(launch_error_message(exc))
        spawn.add_done_callback(self._log_late_failure)
        return job_id

    def _log_late_failure(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.log.info("Launch failed after the build page took over: %s", fut.exception())

    def job_page_url(self, job_id: str, target: str = "") -> str:
        """The job's log page, told to follow the person into the server when ready."""
        return self.booklab_url("jobs", job_id) + "?" + urlencode(
            {"follow": "1", **({"next": target} if target else {})})

    def build_page_url(self, user_name: str, name: str, target: str = "") -> str:
        url = self.booklab_url("build", quote(user_name, safe=""), name)
        return url + ("?" + urlencode({"next": target}) if target else "")


class LaunchFormHandler(LaunchMixin):
    """POST from the picker: project, ref or commit sha (XSRF-checked by the hub)."""

    @web.authenticated
    async def post(self) -> None:
        project = self.get_body_argument("project", "")
        sha = self.get_body_argument("sha", "").strip().lower()
        ref = sha or self.get_body_argument("ref", "")
        try:
            if sha and not check.is_sha(sha):
                raise InvalidInput("A commit sha is 7 to 64 hexadecimal characters")
            # the picker's "autosave" checkbox is sent only when ticked
            autosave = not self.booklab.autosave or bool(self.get_body_argument("autosave", ""))
            url = await self.launch(project, ref, profile=self.get_body_argument("profile", ""),
                                    autosave=autosave)
        except InvalidInput as e:
            self.set_status(400)
            await self.render_page("error.html", title="Cannot launch", message=str(e))
            return
        self.redirect(url)


class LaunchLinkHandler(LaunchMixin):
    """/hub/booklab/v2/gl/<project>/<ref>: the shareable launch link.

    GET asks for a confirming click (or opens the server if it already runs);
    POST, XSRF-checked by the hub, launches.
    """

    def _link(self, project: str, ref: str) -> tuple[str, str, str]:
        target = target_path(self.get_argument("urlpath", ""),
                             self.get_argument("labpath", ""),
                             self.get_argument("filepath", ""))
        return check.project_path(project), check.ref(ref), target

    @web.authenticated  # logged-out visitors go through login and come back here
    async def get(self, project: str, ref: str) -> None:
        try:
            project, ref, target = self._link(project, ref)
        except InvalidInput as e:
            return await self.refuse(str(e))
        url = self.existing_url(project, ref, target)
        if url:
            return self.redirect(url)
        await self.render_page("confirm.html", project=project, ref=ref, target=target,
                               action=self.request.uri, profile=self._profile(),
                               profiles={p.name: p for p in self.booklab.profiles})

    @web.authenticated
    async def post(self, project: str, ref: str) -> None:
        try:
            project, ref, target = self._link(project, ref)
            url = await self.launch(project, ref, target, self._profile())
        except InvalidInput as e:
            return await self.refuse(str(e))
        self.redirect(url)

    def _profile(self) -> str:
        """The launch link's ``?profile=`` (kept in the confirm form's action URL); the
        spawner refuses an unknown one, saying so."""
        return self.get_query_argument("profile", "")[:40]

    async def refuse(self, message: str) -> None:
        self.set_status(400)
        await self.render_page("error.html", title="Cannot launch", message=message)
