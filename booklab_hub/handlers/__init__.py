"""Booklab's pages inside the hub (picker, launch links, build log, admin).

``handlers_for(app)`` returns the Tornado handlers the authenticator mounts
through ``Authenticator.get_handlers`` (JupyterHub adds its ``/hub`` prefix).
Their templates (``booklab/<name>.html``) and Booklab's ``page.html`` (the
hub's own plus Booklab's navigation links) are found through
``c.JupyterHub.template_paths``, which ``booklab_hub.config.apply`` sets to
:data:`booklab_hub.TEMPLATE_DIR`.
"""

from __future__ import annotations

from tornado import web

from ..save import BooklabSaver
from .admin import AdminHandler, CancelJobHandler
from .base import PREFIX, STATIC_DIR, PageSettings
from .buildlog import BuildEventsHandler, BuildPageHandler, JobEventsHandler, JobPageHandler
from .gitproxy import GitProxyHandler, runner_token_of
from .launch import LaunchFormHandler, LaunchLinkHandler
from .picker import BadgeHandler, PickerHandler, ProjectsAPIHandler, RefsAPIHandler, StopHandler
from .save import SaveAPIHandler, SaveArchiveHandler, SavePageHandler

_JOB = r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})"
_SERVER = r"([a-z][a-z0-9-]{0,29})"


def handlers_for(app) -> list[tuple]:
    """Handlers to mount under the hub's base URL."""
    kw = {"booklab": PageSettings.from_app(app)}
    save_kw = {**kw, "saver": BooklabSaver(config=app.config)}
    p = PREFIX
    return [
        (rf"{p}/?", PickerHandler, kw),
        (rf"{p}/api/projects", ProjectsAPIHandler, kw),
        (rf"{p}/api/refs", RefsAPIHandler, kw),
        (rf"{p}/launch", LaunchFormHandler, kw),
        (rf"{p}/stop", StopHandler, kw),
        (rf"{p}/api/save/{_SERVER}", SaveAPIHandler, save_kw),
        (rf"{p}/save/{_SERVER}", SavePageHandler, save_kw),
        (rf"{p}/save/{_SERVER}/changes.zip", SaveArchiveHandler, save_kw),
        (rf"{p}/v2/gl/([^/]+)/(.+)", LaunchLinkHandler, kw),
        (rf"{p}/badge.svg", BadgeHandler),
        (rf"{p}/build/([^/]+)/{_SERVER}", BuildPageHandler, kw),
        (rf"{p}/jobs/{_JOB}", JobPageHandler, kw),
        (rf"{p}/api/build/([^/]+)/{_SERVER}/events", BuildEventsHandler, kw),
        (rf"{p}/api/jobs/{_JOB}/events", JobEventsHandler, kw),
        (rf"{p}/admin", AdminHandler, kw),
        (rf"{p}/admin/jobs/{_JOB}/cancel", CancelJobHandler, kw),
        (rf"{p}/static/(.*)", web.StaticFileHandler, {"path": STATIC_DIR}),
        (rf"{p}/git/{_JOB}/(info/refs|git-upload-pack|git-receive-pack)", GitProxyHandler,
         {**kw, "runner_token": runner_token_of(app)}),
    ]
