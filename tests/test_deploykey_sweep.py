"""The stale deploy-key sweep (run at each Maintainer launch) against the GitLab double
and a real Redis: it removes keys whose fetch is over, and never a key a concurrent
launch has just added (its job is written to Redis a moment after the key)."""

from __future__ import annotations

import datetime as dt
import secrets

from booklab_spawner import deploykeys
from booklab_spawner.gitlab_api import GitLabClient
from booklab_spawner.jobs import new_job_id


def _old_job_id(hours: float) -> str:
    born = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
    return born.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(6)


async def _job_in(store, state: str) -> str:
    job_id = new_job_id()
    await store.create(job_id, {"user": "maria", "project_id": "1"}, "blob")
    path = {"queued": [], "claimed": ["claimed"], "fetching": ["claimed", "fetching"],
            "building": ["claimed", "fetching", "building"],
            "running": ["claimed", "fetching", "building", "starting", "running"],
            "stopped": ["stopping", "stopped"]}[state]
    for s in path:
        await store.transition(job_id, s, s)
    return job_id


async def test_sweep_keeps_fresh_and_fetching_keys_and_removes_the_rest(gitlab, store):
    gitlab.add_user("maria", password="maria-pw")
    gitlab.add_project("demo/hello", files={"README.md": "hi\n"})
    gitlab.add_member("demo/hello", "maria", 40)
    client = GitLabClient(gitlab.url, gitlab.issue_token("maria", ["api"])["access_token"])
    project_id = gitlab.store.project_by_path("demo/hello").id

    jobs = {
        "just-added": new_job_id(),  # a concurrent launch: key added, job not written yet
        "unknown-old": _old_job_id(2),  # a launch that died between key and job
        "queued": await _job_in(store, "queued"),
        "fetching": await _job_in(store, "fetching"),
        "building": await _job_in(store, "building"),  # its fetch is over
        "running": await _job_in(store, "running"),
        "stopped": await _job_in(store, "stopped"),
    }
    ids = {}
    for name, job_id in jobs.items():
        _, public = deploykeys.generate_keypair()
        ids[name] = await deploykeys.add(client, project_id,
                                         deploykeys.title("maria", name, job_id), public)
    _, public = deploykeys.generate_keypair()
    await deploykeys.add(client, project_id, "CI deploy key", public)  # not ours

    removed = await deploykeys.remove_stale(client, project_id, store)

    left = {k["title"] for k in gitlab.deploy_keys("demo/hello")}
    kept = {"just-added", "queued", "fetching"}
    assert left == {"CI deploy key"} | {deploykeys.title("maria", n, jobs[n]) for n in kept}
    assert removed == len(jobs) - len(kept)
