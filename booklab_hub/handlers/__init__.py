"""Booklab's pages inside the hub (picker, launch links, build log, admin).

``handlers_for(app)`` returns the Tornado handlers the authenticator mounts
through ``Authenticator.get_handlers`` (JupyterHub adds its ``/hub`` prefix),
and makes our templates available to the hub's Jinja environment, so that
they extend the hub's own ``page.html``.
"""

from __future__ import annotations

import os

from jinja2 import FileSystemLoader, FunctionLoader, PrefixLoader
from tornado import web

from .admin import AdminHandler, CancelJobHandler
from .base import PREFIX, STATIC_DIR, PageSettings
from .buildlog import BuildEventsHandler, BuildPageHandler, JobEventsHandler, JobPageHandler
from .gitproxy import GitProxyHandler, runner_token_of
from .launch import LaunchFormHandler, LaunchLinkHandler
from .picker import BadgeHandler, PickerHandler, ProjectsAPIHandler, RefsAPIHandler, StopHandler

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")
_JOB = r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})"
_SERVER = r"([a-z][a-z0-9-]{0,29})"


def handlers_for(app) -> list[tuple]:
    """Handlers to mount under the hub's base URL."""
    install_templates(app)
    kw = {"booklab": PageSettings.from_app(app)}
    p = PREFIX
    return [
        (rf"{p}/?", PickerHandler, kw),
        (rf"{p}/api/projects", ProjectsAPIHandler, kw),
        (rf"{p}/api/refs", RefsAPIHandler, kw),
        (rf"{p}/launch", LaunchFormHandler, kw),
        (rf"{p}/stop", StopHandler, kw),
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


def _hub_page(name: str):
    """Our ``page.html``: the hub's own, plus Booklab's links in the navigation bar."""
    if name != "page.html":
        return None
    path = os.path.join(TEMPLATE_DIR, "hub_page.html")
    with open(path) as f:
        return f.read(), path, lambda: True


def install_templates(app) -> None:
    """Add ``booklab/<name>`` templates (and the nav links) to the hub's Jinja loader.

    The nav override is skipped when the operator has their own ``page.html``
    in ``c.JupyterHub.template_paths``; theirs wins, our pages still work.
    """
    settings = getattr(app, "tornado_settings", None) or {}
    env = settings.get("jinja2_env")
    if env is None or getattr(env, "_booklab_installed", False):
        return
    loader = env.loader  # a ChoiceLoader, shared by the hub's sync environment
    ours = PrefixLoader({"booklab": FileSystemLoader(TEMPLATE_DIR)})
    operator_page = any(os.path.exists(os.path.join(path, "page.html"))
                        for path in app.template_paths[:-1])
    loader.loaders.append(ours)
    if not operator_page:
        loader.loaders.insert(1, FunctionLoader(_hub_page))
    env._booklab_installed = True
