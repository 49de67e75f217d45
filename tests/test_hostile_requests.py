"""Hostile requests against the real hub: invisible Unicode in refs, paths that try to
leave the user's server, and property-based tests (hypothesis) that no generated input
gets a 500 or puts anything invalid into Redis.

One hub (with the GitLab double and the session's redis-server, no runner) serves the
whole module, so that a hundred generated requests cost seconds, not minutes.
"""

from __future__ import annotations

import html
import re
import secrets
import time
from contextlib import contextmanager
from urllib.parse import quote, urlencode

import pytest
import redis as syncredis
import requests
from hypothesis import given
from hypothesis import strategies as st

from booklab_hub.handlers.buildlog import MAX_STREAMS_PER_USER, EventStream
from booklab_spawner import validate as check
from tests.conftest_stack import Hub, form_xsrf, seed_demo
from tests.gitlab_double import GitLabDouble
from tests.hostile_inputs import HUB, hostile_text, sneaky_text
from tests.services import artifacts_dir

pytestmark = [pytest.mark.slow]

LINK = "/hub/booklab/v2/gl/demo%2Fhello/"

# characters JupyterHub refuses in a server's display name, and that have no place in a
# ref: bidi override, zero width space, NEL, line and paragraph separators, BOM, soft
# hyphen, a non-character, private use, no-break space
INVISIBLE = ["\u202e", "\u200b", "\u0085", "\u2028", "\u2029", "\ufeff", "\u00ad",
             "\ufffe", "\ue000", "\u00a0"]


@pytest.fixture(scope="module")
def hr_gitlab(tmp_path_factory):
    gl = GitLabDouble(tmp_path_factory.mktemp("hr-gitlab"))
    gl.start()
    seed_demo(gl)
    gl.add_user("admin", password="admin-pw", name="Hub Admin")
    yield gl
    gl.stop()


@pytest.fixture(scope="module")
def hr_hub(hr_gitlab, redis_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hr-hub")
    hub = Hub(workdir, hr_gitlab, redis_server.url, secrets.token_hex(32),
              overrides={"redis": {"key_prefix": f"hr{secrets.token_hex(3)}:"}})
    # its own log file: the tests read it, and other sessions write tests/artifacts/hub.log
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BOOKLAB_TEST_ARTIFACTS", str(artifacts_dir() / "hostile-requests"))
        hub.start()
    yield hub
    hub.stop()
    print(f"hub log: {hub.process.log_path}")


@pytest.fixture(scope="module", autouse=True)
def queued(hr_hub, alice):
    """A valid launch of alice's (no runner: it stays queued), made first: later failed
    launches count against the hub's named-server limit on the REST API."""
    token = hr_hub.user_token("alice")
    r = hr_hub.api("POST", "/users/alice/servers/queued", token=token,
                   json={"user_options": {"project": "demo/hello", "ref": "main"}})
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = [j for j in all_jobs(hr_hub) if j.get("server_name") == "queued"]
        if jobs:
            return jobs[0]
        time.sleep(0.2)
    raise AssertionError("the valid launch queued no job")


@pytest.fixture(autouse=True)
def only_the_queued_server(hr_hub, queued):
    """Each test starts with alice's one queued server, whatever ran before it (the
    order is random): the stopped named servers a test's refused launches leave count
    against the hub's named-server limit."""
    yield
    servers = hr_hub.api("GET", "/users/alice?include_stopped_servers=1").json()["servers"]
    for name in servers:
        if name not in ("", "queued"):
            r = hr_hub.api("DELETE", f"/users/alice/servers/{quote(name, safe='')}",
                           json={"remove": True})
            assert r.status_code in (202, 204), (name, r.status_code, r.text)


@pytest.fixture(scope="module")
def alice(hr_hub):
    return hr_hub.login("alice", "alice-pw")


@pytest.fixture(scope="module")
def admin(hr_hub):
    return hr_hub.login("admin", "admin-pw")


def rdb(hub: Hub) -> syncredis.Redis:
    return syncredis.Redis.from_url(hub.config["redis"]["url"], decode_responses=True)


def queued_jobs(hub: Hub) -> list[dict]:
    r = rdb(hub)
    return [r.hgetall(hub.keys.job(j))
            for j in r.lrange(hub.keys.queue, 0, -1)]


def all_jobs(hub: Hub) -> list[dict]:
    return hub.jobs()


def job_ids(hub: Hub) -> set[str]:
    return {j["id"] for j in all_jobs(hub)}


def assert_nothing_invalid_queued(hub: Hub) -> None:
    """Every job in Redis is a launch the validators and GitLab accepted, and the queue
    holds only such jobs."""
    jobs = {j["id"]: j for j in all_jobs(hub)}
    for job in jobs.values():
        assert check.project_path(job["project"]) == job["project"], job
        assert check.ref(job["ref"]) == job["ref"], job
        assert check.commit_sha(job["sha"]) == job["sha"], job
        assert job["user"] == "alice" and job["project"] == "demo/hello", job
    r = rdb(hub)
    for job_id in r.lrange(hub.keys.queue, 0, -1):
        assert job_id in jobs, job_id
    assert set(r.zrange(hub.keys.jobs, 0, -1)) <= set(jobs)
    for kind in ("log", "token"):  # no log or secret of a job that is not there
        for key in r.scan_iter(f"{hub.key_prefix}{kind}:*"):
            assert key.split(":", 2)[-1] in jobs, key


def server_errors(hub: Hub, since: int) -> list[str]:
    """Lines of the hub's log after offset ``since`` that show a 5xx or a traceback."""
    text = hub.process.output()[since:]
    return [line for line in text.splitlines()
            if re.search(r"\] 5\d\d (GET|POST|PUT|DELETE)|Uncaught exception|Traceback", line)]


def message_of(r: requests.Response) -> str:
    """The sentence of an error page or JSON error."""
    if r.headers.get("Content-Type", "").startswith("application/json"):
        body = r.json()
        return body.get("message") or body.get("error") or ""
    return html.unescape(re.sub(r"<[^>]+>", " ", r.text))


# -- invisible and control characters in refs -----------------------------------------
@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_characters_in_a_launch_link_ref_get_400(hr_hub, alice, char):
    before = job_ids(hr_hub)
    url = hr_hub.url + LINK + quote(f"ma{char}in", safe="")
    for r in (alice.get(url, timeout=60),  # the confirmation page (or, before, the launch)
              alice.post(url, data={"_xsrf": form_xsrf(alice, hr_hub)}, timeout=60)):
        assert r.status_code == 400, (r.request.method, r.status_code, r.text[-1500:])
        assert "Invalid branch, tag or commit" in message_of(r)
        assert char not in r.text  # the message shows the code point, not the character
        assert f"U+{ord(char):04X}" in message_of(r)
    assert job_ids(hr_hub) == before


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_characters_in_the_picker_form_get_400(hr_hub, alice, char):
    before = job_ids(hr_hub)
    r = alice.post(hr_hub.url + "/hub/booklab/launch", timeout=60, data={
        "_xsrf": form_xsrf(alice, hr_hub), "project": "demo/hello", "ref": f"ma{char}in"})
    assert r.status_code == 400, (r.status_code, r.text[-1500:])
    assert "Invalid branch, tag or commit" in message_of(r)
    assert job_ids(hr_hub) == before


@pytest.mark.parametrize("char", INVISIBLE + ["\ud800", "\udfff"],
                         ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_characters_through_the_rest_api_get_400(hr_hub, char):
    """JSON can carry what HTTP paths and forms cannot: a lone surrogate ("\\ud800")."""
    before = job_ids(hr_hub)
    token = hr_hub.user_token("alice")
    r = hr_hub.api("POST", "/users/alice/servers/inv", token=token,
                   json={"user_options": {"project": "demo/hello", "ref": f"ma{char}in"}})
    assert r.status_code == 400, (r.status_code, r.text[-1500:])
    assert "Invalid branch, tag or commit" in r.json()["message"]
    assert job_ids(hr_hub) == before


# -- paths that try to leave the server -----------------------------------------------
ESCAPES = [
    "%2e%2e/%2e%2e/hub/admin", ".%2E/.%2e/hub/token", "%252e%252e/%252e%252e/hub/admin",
    "lab/..%2f..%2f..%2fhub", "//evil.example/x", "/%2f%2fevil.example", "javascript:alert(1)",
    "\\evil.example", "lab/%E2%80%AE.ipynb", "../../hub/admin",
]


@pytest.mark.parametrize("param", ["urlpath", "labpath", "filepath"])
@pytest.mark.parametrize("value", ESCAPES)
def test_launch_link_refuses_paths_that_leave_the_server(hr_hub, alice, param, value):
    before = job_ids(hr_hub)
    if param != "urlpath" and value.startswith(("//", "/%2f", "javascript:")):
        value = "../" + value  # under lab/tree/ these alone are harmless file names
    url = hr_hub.url + LINK + "main?" + urlencode({param: value})
    for r in (alice.get(url, timeout=60, allow_redirects=False),
              alice.post(url, data={"_xsrf": form_xsrf(alice, hr_hub)}, timeout=60,
                         allow_redirects=False)):
        assert r.status_code == 400, (r.request.method, r.status_code, r.text[-1500:])
        assert "The path to open in the server" in message_of(r)
    assert job_ids(hr_hub) == before


@pytest.mark.parametrize("value", ESCAPES)
def test_build_pages_drop_a_next_path_that_leaves_the_server(hr_hub, alice, queued, value):
    """The page's script appends ``next`` to the server's URL: only a path inside it."""
    for page in (f"/hub/booklab/jobs/{queued['id']}?follow=1&",
                 "/hub/booklab/build/alice/queued?"):
        r = alice.get(hr_hub.url + page + urlencode({"next": value}), timeout=60)
        assert r.status_code == 200, r.text[-1500:]
        assert 'data-next=""' in r.text, re.findall(r'data-next="[^"]*"', r.text)
        good = alice.get(hr_hub.url + page + urlencode({"next": "lab/tree/hello.ipynb"}),
                         timeout=60)
        assert 'data-next="lab/tree/hello.ipynb"' in good.text


def test_a_good_launch_link_path_is_kept_for_the_confirmation(hr_hub, alice):
    url = hr_hub.url + LINK + "main?" + urlencode({"labpath": "/notebooks/my%20file.ipynb"})
    r = alice.get(url, timeout=60, allow_redirects=False)
    assert r.status_code == 200, r.text[-1500:]
    assert "lab/tree/notebooks/my%20file.ipynb" in html.unescape(r.text)


# -- many build-log streams ---------------------------------------------------------------
KEEPALIVE_S = EventStream.keepalive_ms / 1000


def wait_for_free_stream_places(session, url: str) -> None:
    """Until a stream opens: streams an earlier test of this module closed count until
    the hub writes to them again (their next keepalive) and sees them gone."""
    deadline = time.monotonic() + 2 * KEEPALIVE_S + 30
    while True:
        with session.get(url, stream=True, timeout=60) as r:
            if r.status_code != 429 or time.monotonic() > deadline:
                return
        time.sleep(0.5)


def _open_streams(session, url: str, n: int) -> tuple[list[requests.Response], list[int]]:
    opened, statuses = [], []
    for _ in range(n):
        r = session.get(url, stream=True, timeout=60)
        statuses.append(r.status_code)
        if r.status_code == 200:
            opened.append(r)
        else:
            r.close()
    return opened, statuses


def test_open_build_log_streams_cannot_exhaust_the_hub(hr_hub, alice, queued):
    """Each open build-log stream waits on Redis with a connection of the hub's pool
    (100). One person opening streams without end (a script, or many tabs) must not
    make every Booklab page and launch fail with 500 "Too many connections": past
    MAX_STREAMS_PER_USER they get 429, and a closed stream gives its place back at once."""
    url = direct(hr_hub) + f"/hub/booklab/api/jobs/{queued['id']}/events"
    page = direct(hr_hub) + f"/hub/booklab/jobs/{queued['id']}"
    since = len(hr_hub.process.output())
    # streams of this module's earlier tests count until the hub sees them close (at
    # the latest at their next keepalive): start once none of them is left
    deadline = time.monotonic() + 2 * KEEPALIVE_S + 30
    while True:
        opened, statuses = _open_streams(alice, url, 110)
        # all places free when it starts: the first ten open, the rest are refused
        full = statuses[:MAX_STREAMS_PER_USER] == [200] * MAX_STREAMS_PER_USER
        if (full and set(statuses[MAX_STREAMS_PER_USER:]) == {429}) or \
                time.monotonic() > deadline:
            break
        for r in opened:
            r.close()
        time.sleep(KEEPALIVE_S + 1)  # these count too until the hub writes to them
    try:
        assert 500 not in statuses, statuses
        assert statuses.count(200) == MAX_STREAMS_PER_USER, statuses
        assert set(statuses[MAX_STREAMS_PER_USER:]) == {429}
        assert alice.get(page, timeout=60).status_code == 200  # the hub still works
        bob = hr_hub.login("bob", "bob-pw")  # and so does everyone else's stream
        with bob.get(direct(hr_hub) + "/hub/booklab/api/jobs/x/events", stream=True,
                     timeout=60) as r:
            assert r.status_code == 404
    finally:
        for r in opened:
            r.close()
    # the closed streams' places come back as soon as the hub sees them close: at the
    # latest when it writes their next keepalive
    deadline = time.monotonic() + 2 * KEEPALIVE_S + 5
    while True:
        with alice.get(url, stream=True, timeout=60) as r:
            if r.status_code == 200:
                break
        assert time.monotonic() < deadline, "closed streams still count after two keepalives"
        time.sleep(0.2)
    assert server_errors(hr_hub, since) == []


def test_a_quiet_build_log_stream_gets_keepalives_and_no_error(hr_hub, alice, queued):
    """A job waiting for a runner logs nothing: the stream sends keepalive comments
    (proxies keep it open) instead of failing when Redis's blocking read outlasts the
    client's socket timeout."""
    url = direct(hr_hub) + f"/hub/booklab/api/jobs/{queued['id']}/events"
    since = len(hr_hub.process.output())
    wait_for_free_stream_places(alice, url)
    start = time.monotonic()
    keepalives = []
    with alice.get(url, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(decode_unicode=True):
            if line == ": keepalive":
                keepalives.append(time.monotonic() - start)
            if len(keepalives) == 3 or time.monotonic() - start > 20:
                break
    assert len(keepalives) == 3 and keepalives[0] < 6, keepalives
    assert server_errors(hr_hub, since) == []


# -- properties: generated hostile requests through the real hub -------------------------
def enc(value: str) -> bytes:
    """UTF-8 bytes as a client would send them (a lone surrogate as its 3 bytes)."""
    return value.encode("utf-8", "surrogatepass")


def seg(value: str) -> str:
    return quote(enc(value), safe="")


def query(**params: str) -> str:
    return urlencode({k: enc(v) for k, v in params.items()})


def direct(hub: Hub) -> str:
    """The hub's own address, bypassing configurable-http-proxy: CHP itself answers 500
    to a path with malformed UTF-8 (``%ED%A0%80``, a lone surrogate) before the hub
    sees it ("URIError: URI malformed" in its decodeURIComponent). That is the
    development proxy's behaviour, not Booklab's; these tests are about the hub's
    handlers. (Production routes through Traefik.)"""
    return f"http://127.0.0.1:{hub.hub_port}"


@contextmanager
def no_server_errors(hub: Hub):
    since = len(hub.process.output())
    yield
    assert server_errors(hub, since) == []
    assert_nothing_invalid_queued(hub)


def assert_handled(r: requests.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url[:300], r.status_code,
                                 r.text[-1500:])


# the valid value is drawn often, so that the other field's hostile value gets deep
PROJECTS = st.one_of(st.just("demo/hello"), st.just("demo/hello"),
                     sneaky_text(["demo/hello", "demo/x-y.z"]), hostile_text(6))
REFS = st.one_of(st.sampled_from(["main", "no-such-branch", "HEAD", "a" * 40]),
                 sneaky_text(["main", "feature/x", "v1.0"]),
                 sneaky_text(["main", "feature/x", "v1.0"]), hostile_text(8))
PATHS = st.one_of(st.sampled_from(ESCAPES),
                  sneaky_text(["lab/tree/hello.ipynb", "tree/a/b", "lab?x=1"]), hostile_text(8))
HEADER = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                        exclude_characters="\x7f"), max_size=40).map(
    str.lstrip)  # what requests sends at all: no leading (Unicode) whitespace


@HUB
@given(project=PROJECTS, ref=REFS, param=st.sampled_from(["urlpath", "labpath", "filepath"]),
       path=PATHS, post=st.booleans())
def test_property_launch_links_never_fail_with_500(hr_hub, alice, queued, project, ref, param,
                                                   path, post):
    url = f"{direct(hr_hub)}/hub/booklab/v2/gl/{seg(project)}/{seg(ref)}?{query(**{param: path})}"
    with no_server_errors(hr_hub):
        if post:
            r = alice.post(url, data={"_xsrf": form_xsrf(alice, hr_hub)}, timeout=60,
                           allow_redirects=False)
        else:
            r = alice.get(url, timeout=60, allow_redirects=False)
        assert_handled(r)
        if r.status_code == 400:
            assert "Cannot launch" in r.text or "Invalid" in r.text


@HUB
@given(project=PROJECTS, ref=REFS, sha=st.one_of(st.just(""), hostile_text(4)))
def test_property_the_picker_form_never_fails_with_500(hr_hub, alice, queued, project, ref,
                                                       sha):
    body = {"_xsrf": form_xsrf(alice, hr_hub), "project": enc(project), "ref": enc(ref),
            "sha": enc(sha)}
    with no_server_errors(hr_hub):
        r = alice.post(direct(hr_hub) + "/hub/booklab/launch", data=body, timeout=60,
                       allow_redirects=False)
        assert_handled(r)


@HUB
@given(project=PROJECTS, search=hostile_text(8), page=st.one_of(hostile_text(3),
                                                                  st.integers().map(str)))
def test_property_the_picker_api_answers_json_never_500(hr_hub, alice, queued, project, search,
                                                        page):
    with no_server_errors(hr_hub):
        for path in (f"/hub/booklab/api/refs?{query(project=project)}",
                     f"/hub/booklab/api/projects?{query(search=search, page=page)}"):
            r = alice.get(direct(hr_hub) + path, timeout=60, allow_redirects=False)
            assert_handled(r)
            if r.status_code != 400 or "Invalid unicode" not in r.text:
                assert r.headers["Content-Type"].startswith("application/json"), r.text[:300]
                assert "error" in r.json() or r.status_code == 200


@HUB
@given(job=st.one_of(st.just(None), hostile_text(6)), user=st.one_of(st.just("alice"),
                                                                     hostile_text(4)),
       server=st.one_of(st.just("queued"), hostile_text(4)), nxt=PATHS, after=HEADER,
       last_id=HEADER)
def test_property_build_log_endpoints_never_fail_with_500(hr_hub, alice, queued, job, user,
                                                          server, nxt, after, last_id):
    job_id = queued["id"] if job is None else job
    pages = [f"/hub/booklab/jobs/{seg(job_id)}?{query(follow='1', next=nxt)}",
             f"/hub/booklab/build/{seg(user)}/{seg(server)}?{query(next=nxt)}"]
    streams = [f"/hub/booklab/api/jobs/{seg(job_id)}/events?{query(after=after)}",
               f"/hub/booklab/api/build/{seg(user)}/{seg(server)}/events?{query(after=after)}"]
    with no_server_errors(hr_hub):
        for path in pages:
            r = alice.get(direct(hr_hub) + path, timeout=60, allow_redirects=False)
            assert_handled(r)
            page = r.content.decode("utf-8")  # requests would guess Latin-1 for text/html
            for n in re.findall(r'data-next="([^"]*)"', page):  # a build page
                assert n == "" or check.server_path(html.unescape(n)) == html.unescape(n)
        for path in streams:
            with alice.get(direct(hr_hub) + path, headers={"Last-Event-ID": last_id},
                           stream=True, timeout=60, allow_redirects=False) as r:
                assert_handled(r)


@HUB
@given(name=hostile_text(6).filter(lambda n: n != "queued"), message=hostile_text(8),
       job=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_property_stop_picker_and_admin_pages_never_fail_with_500(hr_hub, alice, admin, queued,
                                                                  name, message, job):
    """Stop a server by a hostile name, show a hostile message, cancel a job that is
    not there (as the admin): answered, never a 500; the queued job is untouched."""
    if job == queued["id"]:
        return
    base = direct(hr_hub) + "/hub/booklab"
    with no_server_errors(hr_hub):
        r = alice.post(base + "/stop", data={"_xsrf": form_xsrf(alice, hr_hub),
                                             "name": enc(name)}, timeout=60,
                       allow_redirects=False)
        assert_handled(r)
        for session, path in ((alice, "/"), (admin, "/admin")):
            r = session.get(f"{base}{path}?{query(message=message)}", timeout=60)
            assert_handled(r)
        r = admin.post(f"{base}/admin/jobs/{job}/cancel",
                       data={"_xsrf": form_xsrf(admin, hr_hub)}, timeout=60,
                       allow_redirects=False)
        assert_handled(r)
    assert rdb(hr_hub).hget(hr_hub.keys.job(queued['id']), "state") == "queued"
