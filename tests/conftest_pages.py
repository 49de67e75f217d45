"""Fixtures for the pages tests: the real hub and runner of conftest_stack, a richer
GitLab double, and Debian's chromium driven by Playwright.

Everything here is named for these tests: runner ids start with ``pg-``, images
with ``booklab-pg/``; both are removed at the end of the session.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import redis as syncredis
import requests

from tests.conftest_stack import (
    DEMO_DOCKERFILE,
    DEMO_NOTEBOOK,
    Hub,
    RunnerProcess,
    _dump_on_failure,
    notebook,
    running_hub,
)
from tests.services import (
    NOTEBOOK_IMAGE,
    artifacts_dir,
    remove_images,
    remove_runner_containers,
    require_docker,
    require_image,
)

PAGES_IMAGE_PREFIX = "booklab-pg/"
# one id per test process: other sessions may run these tests on the same Docker
PAGES_RUNNER = f"pg-runner-{os.getpid()}"
_PAGES_RUNNERS = {PAGES_RUNNER}
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FAILING_DOCKERFILE = f"""\
FROM {NOTEBOOK_IMAGE}
RUN echo "booklab-test: this build fails on purpose" && exit 3
"""
DEV_NOTEBOOK = notebook("# On the dev branch")
N_SCRATCH = 25  # more projects than one page of the picker (20)


@pytest.fixture
def pages_gitlab(gitlab):
    """alice: Developer on demo/hello, demo/broken and 25 more; bob: nothing; admin."""
    return seed_pages(gitlab)


def seed_pages(gitlab):
    """The pages tests' GitLab: see :func:`pages_gitlab`."""
    for name in ("alice", "bob", "admin"):
        gitlab.add_user(name, password=f"{name}-pw", name=name.title())
    for i in range(N_SCRATCH):
        gitlab.add_project(f"alice/scratch-{i:02d}", description=f"Scratch project {i}")
    gitlab.add_project("demo/escaping", description='<b>not bold</b><img src=x onerror="x()">')
    gitlab.add_member("demo/escaping", "alice", 30)
    gitlab.add_project("demo/broken", files={"Dockerfile": FAILING_DOCKERFILE})
    gitlab.add_member("demo/broken", "alice", 30)
    gitlab.add_project("demo/hello", files={"Dockerfile": DEMO_DOCKERFILE,
                                            "README.md": "# Hello\n"},
                       description="The demo notebook")
    gitlab.demo_sha = gitlab.commit("demo/hello", "main", {"hello.ipynb": DEMO_NOTEBOOK},
                                    message="Add a notebook")
    gitlab.commit("demo/hello", "dev", {"dev.ipynb": DEV_NOTEBOOK}, message="Dev notebook")
    gitlab.create_tag("demo/hello", "v1.0", "main")
    gitlab.add_member("demo/hello", "alice", 30)  # last activity: listed first
    return gitlab


class PagesHub(Hub):
    """The real hub, with the pages tests' image prefix."""

    def write_config(self) -> None:
        self.config["runners"]["image_prefix"] = PAGES_IMAGE_PREFIX
        super().write_config()


@pytest.fixture
def pages_hub(pages_gitlab, redis_server, runner_token, tmp_path, request):
    syncredis.Redis.from_url(redis_server.url).flushdb()  # no jobs or runners of other tests
    yield from running_hub(PagesHub(tmp_path / "hub", pages_gitlab, redis_server.url,
                                 runner_token), request)


@pytest.fixture(scope="session")
def pages_docker():
    client = require_docker()
    require_image(client)
    yield client
    remove_runner_containers(client, {PAGES_RUNNER})
    remove_images(client, PAGES_IMAGE_PREFIX)


PAGES_LABEL = "site=pages-test"  # what the pages' runner offers besides its facts


def running_pages_runner(hub, redis_server, runner_token, tmp_path, request):
    """The pages' runner process for ``hub`` in a fresh work dir; stopped (log printed
    on failure)."""
    workdir = tmp_path / "runner"
    workdir.mkdir()
    proc = RunnerProcess(PAGES_RUNNER, redis_server.url, runner_token, workdir,
                         f"--label={PAGES_LABEL}", key_prefix=hub.key_prefix)
    yield proc
    proc.stop()
    _dump_on_failure(request, proc)


@pytest.fixture
def pages_runner(pages_hub, redis_server, runner_token, tmp_path, pages_docker, request):
    yield from running_pages_runner(pages_hub, redis_server, runner_token, tmp_path, request)


# -- the browser ----------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium():
    # module scope: Playwright's sync API keeps an event loop running in this
    # thread while it is open, which pytest-asyncio tests of other modules refuse
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium, request):
    """A fresh browser profile (no cookies) per test; a screenshot if the test fails."""
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(60_000)
    page = context.new_page()
    yield page
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)
    context.close()


def sign_in_at_gitlab(page, username: str, password: str) -> None:
    """On the double's sign-in form (reached through the OAuth redirect)."""
    page.wait_for_selector("#user_login")
    page.fill("#user_login", username)
    page.fill("#user_password", password)
    page.locator("#new_user [type=submit], #new_user button").first.click()


def click_sign_in(page) -> None:
    """The hub's login page: its "Sign in with GitLab" button starts the OAuth redirect."""
    page.get_by_text(re.compile("Sign in with GitLab", re.I)).click()


def browser_login(page, hub, username: str, password: str) -> None:
    """From the hub's front door through GitLab's OAuth redirect, as a person would."""
    page.goto(hub.url + "/")
    click_sign_in(page)
    sign_in_at_gitlab(page, username, password)
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/hub/booklab/?$"))


def save_screenshot(page, name: str) -> None:
    """Into tests/artifacts/ always; into docs/img/ with BOOKLAB_UPDATE_SCREENSHOTS=1.

    So a test run leaves the work tree clean, and refreshing the docs' pictures
    is a deliberate act (then look at them before committing).
    """
    page.screenshot(path=str(artifacts_dir() / name), full_page=False)
    if os.environ.get("BOOKLAB_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / name), full_page=False)


# -- subdomain_host ---------------------------------------------------------------
class SubdomainHub(PagesHub):
    """The pages hub with ``hub.subdomain_host = http://hub.localhost:<port>``: each
    person's servers live on ``<user>.hub.localhost``. Chromium resolves every
    ``*.localhost`` name to loopback by itself; glibc does not, so plain HTTP clients
    reach the proxy on 127.0.0.1 and send the Host header (:meth:`get`)."""

    def _use_ports(self, port: int, hub_port: int, proxy_api_port: int,
                   traefik_api_port: int) -> None:
        super()._use_ports(port, hub_port, proxy_api_port, traefik_api_port)
        self.public_url = f"http://hub.localhost:{port}"
        self.config["hub"]["subdomain_host"] = self.public_url
        # gitlab.callback_url is left out: it defaults to <subdomain_host>/hub/oauth_callback
        self.gitlab.store.apps[self.client_id].redirect_uris.append(
            self.public_url + "/hub/oauth_callback")

    def user_host(self, user: str) -> str:
        return f"http://{user}.hub.localhost:{self.port}"

    def get(self, host: str, path: str, **kw) -> requests.Response:
        """GET on the proxy as a browser asking for ``host`` (e.g. alice.hub.localhost)."""
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=30,
                            headers={"Host": f"{host}:{self.port}", **kw.pop("headers", {})},
                            **kw)


@pytest.fixture
def subdomain_hub(pages_gitlab, redis_server, runner_token, tmp_path, request):
    yield from running_hub(SubdomainHub(tmp_path / "hub", pages_gitlab, redis_server.url,
                                 runner_token), request)


@pytest.fixture
def subdomain_runner(subdomain_hub, redis_server, runner_token, tmp_path, pages_docker,
                     request):
    yield from running_pages_runner(subdomain_hub, redis_server, runner_token, tmp_path,
                                    request)
