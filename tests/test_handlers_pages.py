"""Booklab's handlers over HTTP against the real hub, the GitLab double and Redis:
the SSE build log (replay, resume, keepalive, failure), who sees what, errors a
person can act on, XSRF and input checks. No runner runs here unless a test
starts one, so launches stay queued."""

from __future__ import annotations

import html
import json
import queue
import threading
import time

import pytest
import requests

from booklab_spawner.names import server_name

pytestmark = [pytest.mark.slow]


def read_events(session: requests.Session, url: str, stop, headers=None,
                timeout: float = 120) -> list[dict]:
    """Read an SSE stream in a thread until ``stop(events)`` is true; comments kept."""
    out: queue.Queue = queue.Queue()

    def reader() -> None:
        try:
            with session.get(url, headers=headers or {}, stream=True, timeout=timeout) as r:
                out.put({"status": r.status_code, "type": r.headers.get("Content-Type")})
                event: dict = {}
                for line in r.iter_lines(decode_unicode=True):
                    if line.startswith(":"):
                        out.put({"comment": line[1:].strip()})
                    elif line == "" and event:
                        out.put(event)
                        event = {}
                    elif ":" in line:
                        field, value = line.split(":", 1)
                        event[field] = value.strip()
        except Exception as e:  # noqa: BLE001 - handed to the test thread
            out.put({"error": repr(e)})
        out.put(None)

    threading.Thread(target=reader, daemon=True).start()
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = out.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            break
        if item is None:
            return events
        events.append(item)
        if stop(events):
            return events
    raise AssertionError(f"stream did not finish: {events}")


def launch_via_api(hub, user: str, server: str, project: str, ref: str) -> str:
    token = hub.user_token(user)
    r = hub.api("POST", f"/users/{user}/servers/{server}", token=token,
                json={"user_options": {"project": project, "ref": ref}})
    assert r.status_code in (201, 202), r.text
    return token


def wait_for_job(hub, user: str, server: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = hub.job_of(user, server)
        if job:
            return job["id"]
        time.sleep(0.2)
    raise AssertionError(f"no job for {user}/{server}")


def has(kind: str, after: str = ""):
    """Stop when an event (or comment) ``kind`` came, after an event ``after`` if given."""
    def seen(events: list[dict]) -> bool:
        start = next((i for i, e in enumerate(events) if e.get("event") == after), None) \
            if after else 0
        return start is not None and any(
            e.get("event") == kind or kind in e.get("comment", "") for e in events[start:])
    return seen


def test_build_log_replays_resumes_keeps_alive_and_is_private(pages_hub):
    alice = pages_hub.login("alice", "alice-pw")
    launch_via_api(pages_hub, "alice", "queued", "demo/hello", "main")
    job_id = wait_for_job(pages_hub, "alice", "queued")
    url = pages_hub.url + f"/hub/booklab/api/jobs/{job_id}/events"

    # replay from the start, then keepalive comments while the job waits for a runner
    events = read_events(alice, url, has("keepalive"))
    assert events[0]["status"] == 200 and events[0]["type"].startswith("text/event-stream")
    states = [e for e in events if e.get("event") == "state"]
    assert json.loads(states[0]["data"])["state"] == "queued"
    first_id = states[0]["id"]
    assert first_id == pages_hub.redis().xrange(pages_hub.keys.log(job_id))[0][0]

    # a reconnect with Last-Event-ID gets only what came after
    pages_hub.redis().xadd(pages_hub.keys.log(job_id),
                           {"kind": "log", "phase": "fetching", "message": "line after",
                            "ts": str(time.time())})
    events = read_events(alice, url, has("log"), headers={"Last-Event-ID": first_id})
    logs = [e for e in events if e.get("event") in ("log", "state")]
    assert [json.loads(e["data"])["message"] for e in logs] == ["line after"]

    # bob may not read alice's log; the admin may
    bob = pages_hub.login("bob", "bob-pw")
    assert bob.get(url, timeout=30).status_code == 404
    assert bob.get(pages_hub.url + f"/hub/booklab/jobs/{job_id}", timeout=30).status_code == 404
    assert bob.get(pages_hub.url + "/hub/booklab/build/alice/queued",
                   timeout=30).status_code == 404
    admin = pages_hub.login("admin", "admin-pw")
    page = admin.get(pages_hub.url + f"/hub/booklab/jobs/{job_id}", timeout=30)
    assert page.status_code == 200 and "demo/hello" in page.text

    # cancelled by the admin: the stream ends with "stopped", the hub forgets the server
    admin_page = admin.get(pages_hub.url + "/hub/booklab/admin", timeout=30)
    assert job_id in admin_page.text and "No runner has registered" in admin_page.text
    r = admin.post(pages_hub.url + f"/hub/booklab/admin/jobs/{job_id}/cancel",
                   data={"_xsrf": admin.cookies.get("_xsrf")}, timeout=60)
    assert r.status_code == 200 and "Stopping alice" in r.text
    events = read_events(alice, url, has("end"))
    assert any(e.get("event") == "stopped" for e in events)


def test_launch_of_unknown_branch_says_so_and_failed_spawn_streams_reason(pages_hub):
    alice = pages_hub.login("alice", "alice-pw")
    r = alice.post(pages_hub.url + "/hub/booklab/launch", timeout=60, data={
        "_xsrf": alice.cookies.get("_xsrf"), "project": "demo/hello", "ref": "no-such-branch"})
    assert r.status_code == 400
    assert "Branch, tag or commit 'no-such-branch' not found" in html.unescape(r.text)
    assert "Traceback" not in r.text

    # the server page of a launch that failed before any job tells why
    name = server_name("demo/hello", "no-such-branch")
    events = read_events(alice, pages_hub.url + f"/hub/booklab/api/build/alice/{name}/events",
                         has("end"))
    failed = [json.loads(e["data"]) for e in events if e.get("event") == "failed"]
    assert failed and "not found" in failed[0]["message"]


def test_launch_by_commit_sha_queues_exactly_that_commit(pages_hub, pages_gitlab):
    alice = pages_hub.login("alice", "alice-pw")
    xsrf = alice.cookies.get("_xsrf")
    r = alice.post(pages_hub.url + "/hub/booklab/launch", timeout=60, data={
        "_xsrf": xsrf, "project": "demo/hello", "ref": "main", "sha": "not-a-sha"})
    assert r.status_code == 400 and "hexadecimal" in r.text
    sha = pages_gitlab.demo_sha
    r = alice.post(pages_hub.url + "/hub/booklab/launch", timeout=60, data={
        "_xsrf": xsrf, "project": "demo/hello", "ref": "main", "sha": sha[:10]})
    assert r.status_code == 200 and "/hub/booklab/jobs/" in r.url and "follow=1" in r.url
    job_id = r.url.split("/jobs/", 1)[1].split("?", 1)[0]
    job = pages_hub.redis().hgetall(pages_hub.keys.job(job_id))
    assert (job["user"], job["ref"], job["sha"]) == ("alice", sha[:10], sha)
    assert job["server_name"] == server_name("demo/hello", sha[:10])


def test_forms_need_xsrf_and_bad_input_is_refused(pages_hub):
    alice = pages_hub.login("alice", "alice-pw")
    r = alice.post(pages_hub.url + "/hub/booklab/launch", timeout=30,
                   data={"project": "demo/hello", "ref": "main"})
    assert r.status_code == 403
    for path, message in [
        ("/hub/booklab/v2/gl/demo%2Fhello/--upload-pack=touch%20x", "Invalid branch"),
        ("/hub/booklab/v2/gl/..%2Fetc/main", "Invalid project path"),
        ("/hub/booklab/v2/gl/demo%2Fhello/main?urlpath=../../hub/admin", "may not contain"),
    ]:
        r = alice.get(pages_hub.url + path, timeout=30)
        assert r.status_code == 400, path
        assert message in html.unescape(r.text), (path, r.text[-2000:])
    assert "hello" not in json.dumps(pages_hub.api("GET", "/users/alice").json()["servers"])


def test_hub_pages_link_to_booklab(pages_hub):
    admin = pages_hub.login("admin", "admin-pw")
    home = admin.get(pages_hub.url + "/hub/home", timeout=30)
    assert home.status_code == 200
    assert 'href="/hub/booklab/"' in home.text and 'href="/hub/booklab/admin"' in home.text
    alice = pages_hub.login("alice", "alice-pw")
    home = alice.get(pages_hub.url + "/hub/home", timeout=30)
    assert 'href="/hub/booklab/"' in home.text and "/hub/booklab/admin" not in home.text


def test_badge_is_public_svg(pages_hub):
    r = requests.get(pages_hub.url + "/hub/booklab/badge.svg", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("image/svg+xml")
    assert "Booklab" in r.text


def test_gitlab_errors_become_messages(pages_hub, pages_gitlab):
    alice = pages_hub.login("alice", "alice-pw")
    page = alice.get(pages_hub.url + "/hub/booklab/", timeout=30)
    assert "No runner is online" in page.text

    for token in list(pages_gitlab.store.tokens):
        if pages_gitlab.store.tokens[token].user_id == \
                pages_gitlab.store.user_by_name("alice").id:
            pages_gitlab.revoke_token(token)
    r = alice.get(pages_hub.url + "/hub/booklab/api/projects", timeout=30)
    assert r.status_code == 401
    assert "log out and log in again" in r.json()["error"]

    pages_gitlab.stop()
    r = alice.get(pages_hub.url + "/hub/booklab/api/refs?project=demo/hello", timeout=60)
    assert r.status_code == 502
    assert "unreachable" in r.json()["error"]


def test_build_page_opened_before_the_job_exists_gets_it_from_its_first_entry(pages_hub,
                                                                             pages_gitlab):
    """GitLab is slow: the launch request gives up waiting and sends the person to the
    server's build page before any job is in Redis. Its stream is open at once and,
    when GitLab answers, shows the job from its first log entry; a launch that GitLab
    then refuses ends the stream with GitLab's reason."""
    alice = pages_hub.login("alice", "alice-pw")
    for ref, end in [("main", has("keepalive", after="state")), ("no-such-branch", has("end"))]:
        release = pages_gitlab.hold()
        try:
            r = alice.post(pages_hub.url + "/hub/booklab/launch", timeout=120, data={
                "_xsrf": alice.cookies.get("_xsrf"), "project": "demo/hello", "ref": ref})
            name = server_name("demo/hello", ref)
            assert r.status_code == 200 and r.url.endswith(f"/hub/booklab/build/alice/{name}")
            if ref == "main":  # GitLab has not answered: the job is not in Redis yet
                assert not pages_hub.jobs()

            def release_once_open(events, end=end, release=release):
                if any(e.get("comment") for e in events):
                    release()  # the stream is open and waiting: now GitLab answers
                return end(events)

            events = read_events(alice, pages_hub.url + f"/hub/booklab/api/build/alice/{name}"
                                 "/events", release_once_open)
        finally:
            release()
        kinds = [e.get("event") for e in events if e.get("event")]
        if ref == "main":
            assert "job" in kinds, events
            job_id = json.loads(next(e for e in events if e.get("event") == "job")["data"])["job"]
            first = pages_hub.redis().xrange(pages_hub.keys.log(job_id))[0][0]
            states = [e for e in events if e.get("event") == "state"]
            assert kinds.index("job") < kinds.index("state") and states[0]["id"] == first
            assert json.loads(states[0]["data"])["state"] == "queued"
        else:
            failed = [json.loads(e["data"]) for e in events if e.get("event") == "failed"]
            assert kinds[-2:] == ["failed", "end"], events
            assert "Branch, tag or commit 'no-such-branch' not found" in failed[0]["message"]


def test_refs_list_every_branch_beyond_gitlabs_first_page(pages_hub, pages_gitlab):
    """GitLab answers at most 100 branches per page: the picker follows the pages
    (before python-gitlab it showed the first 100 and "only the first 100...")."""
    topics = {f"topic-{i:03d}" for i in range(110)}
    for name in sorted(topics):
        pages_gitlab.commit("demo/hello", name, {"topic.txt": name})
    alice = pages_hub.login("alice", "alice-pw")

    r = alice.get(pages_hub.url + "/hub/booklab/api/refs?project=demo/hello", timeout=60)

    assert r.status_code == 200, r.text
    assert set(r.json()["branches"]) == topics | {"main", "dev"}
    assert r.json()["truncated"] is False and r.json()["tags"] == ["v1.0"]
