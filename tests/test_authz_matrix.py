"""Who may do what on Booklab's pages, JSON and SSE endpoints: one table.

Actors: alice (user A, Developer on demo/hello, with servers starting), bob (user
B, no access to demo/hello), admin (a JupyterHub admin, but no GitLab access to
demo/hello either) and a visitor who is not logged in. Each row is one endpoint
with what each actor gets: a status, a redirect to the login page, or a redirect
somewhere. Rows an actor may not use must also change nothing: no job appears
or changes state in Redis, no server of alice's starts or stops.

One real hub (JupyterHub + CHP), the GitLab double and Redis for the whole
module; no runner, so launches stay queued.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import pytest
import redis as syncredis
import requests

from booklab_spawner.jobs import QUEUED, TERMINAL
from booklab_spawner.names import server_name
from tests.conftest_pages import PagesHub, seed_pages
from tests.conftest_stack import form_xsrf
from tests.gitlab_double import GitLabDouble

pytestmark = [pytest.mark.slow]

ANON, ALICE, BOB, ADMIN = "anonymous", "alice", "bob", "admin"
ACTORS = (ANON, ALICE, BOB, ADMIN)
LOGIN = "login"  # 302 to /hub/login?next=<this page>


@dataclass(frozen=True)
class Redirect:
    to: str  # the Location starts with this


@dataclass(frozen=True)
class Row:
    id: str
    method: str
    path: str  # {main}, {main_job}, {dev}, {dev_job}, {sha} filled from the world
    expect: dict
    form: dict = field(default_factory=dict)  # POST body; _xsrf added unless xsrf=False
    xsrf: bool = True
    needs: tuple = ("main",)  # alice's servers that must be starting before the request
    changes: tuple = ()  # actors for whom the row is meant to change something


SSE_OK = 200
ROWS = [
    Row("picker", "GET", "/hub/booklab/", {ANON: LOGIN, ALICE: 200, BOB: 200, ADMIN: 200}),
    Row("projects-api", "GET", "/hub/booklab/api/projects",
        {ANON: 403, ALICE: 200, BOB: 200, ADMIN: 200}),
    Row("refs-api", "GET", "/hub/booklab/api/refs?project=demo%2Fhello",
        {ANON: 403, ALICE: 200, BOB: 404, ADMIN: 404}),
    # a launch link's GET only asks (confirmation page), whoever opens it
    Row("launch-link-get", "GET", "/hub/booklab/v2/gl/demo%2Fhello/{sha}",
        {ANON: LOGIN, ALICE: 200, BOB: 200, ADMIN: 200}),
    # ... or opens what already runs: alice's own starting server, nobody else's
    Row("launch-link-get-running", "GET", "/hub/booklab/v2/gl/demo%2Fhello/main",
        {ANON: LOGIN, ALICE: Redirect("/hub/booklab/jobs/{main_job}"), BOB: 200, ADMIN: 200}),
    Row("launch-link-post", "POST", "/hub/booklab/v2/gl/demo%2Fhello/v1.0",
        {ANON: 403, ALICE: Redirect("/hub/booklab/jobs/"), BOB: 400, ADMIN: 400},
        changes=(ALICE,)),
    Row("launch-link-post-no-xsrf", "POST", "/hub/booklab/v2/gl/demo%2Fhello/v1.0",
        {ANON: 403, ALICE: 403, BOB: 403, ADMIN: 403}, xsrf=False),
    Row("launch-form", "POST", "/hub/booklab/launch",
        {ANON: 403, ALICE: Redirect("/hub/booklab/jobs/"), BOB: 400, ADMIN: 400},
        form={"project": "demo/hello", "ref": "v1.0"}, changes=(ALICE,)),
    Row("launch-form-no-xsrf", "POST", "/hub/booklab/launch",
        {ANON: 403, ALICE: 403, BOB: 403, ADMIN: 403},
        form={"project": "demo/hello", "ref": "v1.0"}, xsrf=False),
    Row("hub-spawn-query", "GET", "/hub/spawn/alice/sneaky?opt-project=demo/hello&opt-ref=main",
        {ANON: LOGIN, ALICE: 400, BOB: 404, ADMIN: 400}),
    Row("build-page", "GET", "/hub/booklab/build/alice/{main}",
        {ANON: LOGIN, ALICE: 200, BOB: 404, ADMIN: 200}),
    Row("job-page", "GET", "/hub/booklab/jobs/{main_job}",
        {ANON: LOGIN, ALICE: 200, BOB: 404, ADMIN: 200}),
    Row("build-events", "GET", "/hub/booklab/api/build/alice/{main}/events",
        {ANON: 403, ALICE: SSE_OK, BOB: 404, ADMIN: SSE_OK}),
    Row("job-events", "GET", "/hub/booklab/api/jobs/{main_job}/events",
        {ANON: 403, ALICE: SSE_OK, BOB: 404, ADMIN: SSE_OK}),
    Row("admin-page", "GET", "/hub/booklab/admin", {ANON: LOGIN, ALICE: 403, BOB: 403,
                                                    ADMIN: 200}),
    Row("cancel", "POST", "/hub/booklab/admin/jobs/{dev_job}/cancel",
        {ANON: 403, ALICE: 403, BOB: 403, ADMIN: Redirect("/hub/booklab/admin?message=")},
        needs=("main", "dev"), changes=(ADMIN,)),
    Row("cancel-no-xsrf", "POST", "/hub/booklab/admin/jobs/{dev_job}/cancel",
        {ANON: 403, ALICE: 403, BOB: 403, ADMIN: 403}, xsrf=False, needs=("main", "dev")),
    # stop acts on the caller's own servers: alice's name means nothing to bob or admin
    Row("stop", "POST", "/hub/booklab/stop",
        {ANON: 403, ALICE: Redirect("/hub/booklab/"), BOB: 404, ADMIN: 404},
        form={"name": "{dev}"}, needs=("main", "dev"), changes=(ALICE,)),
    Row("stop-no-xsrf", "POST", "/hub/booklab/stop", {ANON: 403, ALICE: 403, BOB: 403,
                                                      ADMIN: 403},
        form={"name": "{dev}"}, xsrf=False, needs=("main", "dev")),
    # Save to GitLab: the owner's ready servers only (alice's here are still starting:
    # 404 for her too; tests/test_save_e2e.py saves a running one), never another's
    Row("save-preview", "GET", "/hub/booklab/api/save/{main}",
        {ANON: 403, ALICE: 404, BOB: 404, ADMIN: 404}),
    Row("save-api", "POST", "/hub/booklab/api/save/{main}",
        {ANON: 403, ALICE: 404, BOB: 404, ADMIN: 404}, form={"branch": "x"}),
    Row("save-page", "GET", "/hub/booklab/save/{main}",
        {ANON: LOGIN, ALICE: 404, BOB: 404, ADMIN: 404}),
    Row("save-page-post", "POST", "/hub/booklab/save/{main}",
        {ANON: 403, ALICE: 404, BOB: 404, ADMIN: 404}, form={"branch": "x"}),
    Row("save-page-no-xsrf", "POST", "/hub/booklab/save/{main}", {a: 403 for a in ACTORS},
        form={"branch": "x"}, xsrf=False),
    Row("save-zip", "GET", "/hub/booklab/save/{main}/changes.zip",
        {ANON: LOGIN, ALICE: 404, BOB: 404, ADMIN: 404}),
    # the runners' git proxy takes only a job's fetch grant, never a login cookie
    Row("git-proxy-refs", "GET", "/hub/booklab/git/{main_job}/info/refs?service=git-upload-pack",
        {a: 403 for a in ACTORS}),
    Row("git-proxy-fetch", "POST", "/hub/booklab/git/{main_job}/git-upload-pack",
        {a: 403 for a in ACTORS}),
    Row("git-proxy-push", "POST", "/hub/booklab/git/{main_job}/git-receive-pack",
        {a: 403 for a in ACTORS}),
    Row("badge", "GET", "/hub/booklab/badge.svg", {a: 200 for a in ACTORS}),
    Row("static", "GET", "/hub/booklab/static/picker.js", {a: 200 for a in ACTORS}),
]


class World:
    """The hub, the people's sessions, and alice's servers (started on demand)."""

    def __init__(self, hub: PagesHub, gitlab: GitLabDouble):
        self.hub, self.gitlab = hub, gitlab
        self.sessions = {ANON: requests.Session()}
        for name in (ALICE, BOB, ADMIN):
            self.sessions[name] = hub.login(name, f"{name}-pw")
        self.redis = syncredis.Redis.from_url(hub.config["redis"]["url"],
                                              decode_responses=True)

    def jobs(self) -> dict[str, dict]:
        out = {}
        for job in self.hub.jobs():
            if job:
                out[job["id"]] = job
        return out

    def alice_servers(self) -> dict[str, str]:
        servers = self.hub.api("GET", "/users/alice").json()["servers"]
        return {name: s.get("pending") or ("ready" if s.get("ready") else "")
                for name, s in servers.items()}

    def snapshot(self) -> tuple:
        return ({i: j["state"] for i, j in self.jobs().items()},
                self.alice_servers(), self.redis.lrange(self.hub.keys.queue, 0, -1))

    def job_of(self, server: str) -> dict | None:
        mine = [j for j in self.jobs().values()
                if j["user"] == ALICE and j["server_name"] == server]
        return max(mine, key=lambda j: float(j["created"])) if mine else None

    def ensure(self, ref: str) -> tuple[str, str]:
        """alice's server for demo/hello@ref is starting with a queued job: (name, job)."""
        name = server_name("demo/hello", ref)
        self.settle(name)
        if self.alice_servers().get(name) != "spawn":
            # through Booklab's launch form, as alice would (it makes room within the
            # server limit; JupyterHub's API counts her stopped servers too)
            alice = self.sessions[ALICE]
            r = alice.post(self.hub.url + "/hub/booklab/launch", allow_redirects=False,
                           timeout=60, data={"_xsrf": form_xsrf(alice, self.hub),
                                             "project": "demo/hello", "ref": ref})
            assert r.status_code == 302, (r.status_code, r.text[:1500])
        job = wait_for(lambda: (j := self.job_of(name)) and j["state"] == QUEUED and j,
                       f"a queued job for alice/{name}")
        return name, job["id"]

    def settle(self, name: str) -> None:
        """Wait until alice's server ``name`` is not stopping and its last job has ended
        or is queued, so that snapshots compare settled states."""
        wait_for(lambda: self.alice_servers().get(name) != "stop", f"{name} stopped")
        wait_for(lambda: (j := self.job_of(name)) is None or j["state"] in (QUEUED, *TERMINAL)
                 if self.alice_servers().get(name) != "spawn" else True,
                 f"{name}'s job settled")


def wait_for(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {timeout} s")


@pytest.fixture(scope="module")
def world(redis_server, tmp_path_factory):
    gitlab = GitLabDouble(tmp_path_factory.mktemp("authz-gitlab"))
    gitlab.start()
    seed_pages(gitlab)
    syncredis.Redis.from_url(redis_server.url).flushdb()
    workdir = tmp_path_factory.mktemp("authz-hub")
    hub = PagesHub(workdir, gitlab, redis_server.url, secrets.token_hex(32))
    try:
        hub.start()
        yield World(hub, gitlab)
    finally:
        hub.stop()
        gitlab.stop()


def request(world: World, actor: str, row: Row, values: dict) -> requests.Response:
    session = world.sessions[actor]
    url = world.hub.url + row.path.format(**values)
    if row.method == "GET":
        # SSE streams stay open: read the status and headers only
        r = session.get(url, allow_redirects=False, stream=True, timeout=30)
        r.close()
        return r
    form = {k: v.format(**values) for k, v in row.form.items()}
    if row.xsrf and session.cookies.get("_xsrf"):
        # as a browser posts a form it has just loaded: JupyterHub binds the XSRF token
        # to the login cookie, which it renews now and then, so an old one may be stale
        session.get(world.hub.url + "/hub/booklab/", timeout=30)
        form["_xsrf"] = session.cookies.get("_xsrf")
    return session.post(url, data=form, allow_redirects=False, timeout=60)


def check_outcome(r: requests.Response, expected, values: dict, path: str) -> None:
    got = (r.status_code, r.headers.get("Location", ""))
    if expected == LOGIN:
        assert r.status_code == 302 and got[1].startswith("/hub/login?next="), got
    elif isinstance(expected, Redirect):
        assert r.status_code == 302 and got[1].startswith(expected.to.format(**values)), got
    else:
        assert r.status_code == expected, got
        if r.status_code == 200 and "/events" in path:
            assert r.headers["Content-Type"].startswith("text/event-stream")


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_authorization_matrix(world, row, actor):
    values = {"sha": world.gitlab.demo_sha}
    for ref in row.needs:
        name, job = world.ensure(ref)
        values[ref], values[f"{ref}_job"] = name, job
    world.settle(server_name("demo/hello", "v1.0"))
    before = world.snapshot()

    r = request(world, actor, row, values)
    check_outcome(r, row.expect[actor], values, row.path)

    if actor not in row.changes:
        time.sleep(0.5)  # a launch or stop would have touched Redis by now
        for ref in row.needs:
            world.settle(values[ref])
        assert world.snapshot() == before, "a refused or read-only request changed something"
    elif row.id.startswith("launch"):
        job = wait_for(lambda: world.job_of(server_name("demo/hello", "v1.0")),
                       "alice's v1.0 job")
        assert job["state"] == QUEUED and job["ref"] == "v1.0"
    else:  # stop, cancel: alice's dev server goes away and its job ends
        wait_for(lambda: values["dev"] not in world.alice_servers(), "dev stopped")
        wait_for(lambda: world.jobs()[values["dev_job"]]["state"] in TERMINAL, "dev job ended")
    assert not [j for j in world.jobs().values() if j["user"] != ALICE], \
        "a job for someone who cannot read demo/hello"
