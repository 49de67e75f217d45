"""Deploy key or token: which clone credential a launch gets (in-process hub).

One row per (gitlab.clone_method, gitlab.ssh_known_hosts, the user's role): the
job's ``clone_method`` as the runner reads it from Redis, the deploy key the
double holds while the job is queued (and its removal when the launch fails),
or the refusal the user reads when no allowed credential exists.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.inproc

OPTIONS = {"project": "demo/hello", "ref": "main"}
SSH = "ssh"  # a fresh read-only deploy key on the project
PROXY = "proxy"  # a one-time grant for the hub's read-only git proxy, no key
NEEDS_MAINTAINER = ("This hub clones with read-only deploy keys, which need the Maintainer "
                    "role on demo/hello: ask a maintainer of demo/hello to launch it for you, "
                    "or the hub's operator to allow token cloning (gitlab.clone_method: auto)")
KNOWN = None  # the fixture's ssh_known_hosts line stays
UNKNOWN = ""  # gitlab.ssh_known_hosts not set

# one hub per configuration (a hub start is most of a row's cost); the users' rows
# under it run one after the other
CASES = [
    # clone_method, ssh_known_hosts, {user (role on demo/hello): expected}
    ("auto", KNOWN, {"maria": SSH,  # Maintainer
                     "alice": PROXY}),  # Developer: deploy keys need Maintainer
    # without GitLab's host key a runner could not check the server it clones from
    ("auto", UNKNOWN, {"maria": PROXY, "alice": PROXY}),
    ("deploy_key", KNOWN, {"maria": SSH, "alice": NEEDS_MAINTAINER}),
    # the operator asked for deploy keys: no fallback (runners may have --known-hosts)
    ("deploy_key", UNKNOWN, {"maria": SSH, "alice": NEEDS_MAINTAINER}),
    ("token", KNOWN, {"maria": PROXY, "alice": PROXY}),
    ("token", UNKNOWN, {"maria": PROXY, "alice": PROXY}),
]


def _gitlab_config(clone_method: str, known_hosts: str | None) -> dict:
    config = {"clone_method": clone_method}
    if known_hosts is not None:
        config["ssh_known_hosts"] = known_hosts
    return {"gitlab": config}


async def _each_gets(hub, expected: dict[str, str]) -> None:
    """Log each user in and check the credential their launch gets (or the refusal)."""
    for user, outcome in expected.items():
        await hub.login(user)
        if outcome in (SSH, PROXY):
            await _launches_with(hub, user, outcome)
        else:
            await _is_refused(hub, user, outcome)


@pytest.mark.parametrize("clone_method,known_hosts,expected", CASES,
                         ids=[f"{m}-{'hostkey' if k is None else 'nohostkey'}"
                              for m, k, _ in CASES])
async def test_clone_credential(inproc_hub, clone_method, known_hosts, expected):
    hub = await inproc_hub(_gitlab_config(clone_method, known_hosts))
    await _each_gets(hub, expected)


async def _is_refused(hub, user: str, message: str) -> None:
    assert await hub.spawn_error(user, "one", OPTIONS) == (403, message), user
    assert await hub.jobs(user) == [] and await hub.store.queued() == [], user
    assert hub.gitlab.deploy_keys("demo/hello") == [], user


async def _launches_with(hub, user: str, clone_method: str) -> None:
    request, job = await hub.launch(user, "one", OPTIONS)
    assert (job["user"], job["clone_method"]) == (user, clone_method)
    keys = hub.gitlab.deploy_keys("demo/hello")
    if clone_method == SSH:
        (key,) = keys
        assert key["title"] == f"booklab: {user}/one (job {job['id']})"
        assert key["can_push"] is False and job["deploy_key_id"] == str(key["id"])
    else:
        assert (keys, job["deploy_key_id"]) == ([], ""), user
    await hub.end_launch(request, job["id"])
    # a launch that failed before its fetch took its deploy key with it
    assert hub.gitlab.deploy_keys("demo/hello") == [], user


# GitLab's project ``permissions`` leave out access through a group share: pia's
# Maintainer role comes only from `partners`, which demo/hello is shared with
SHARE_CASES = [
    # clone_method, share's group_access, {user (role in partners): expected}
    ("auto", 40, {"pia": SSH,  # Maintainer through the share
                  "dan": PROXY}),  # Developer through the share
    ("deploy_key", 40, {"pia": SSH, "dan": NEEDS_MAINTAINER}),
    # the share caps the role: a Maintainer of partners is a Developer on the project
    ("deploy_key", 30, {"pia": NEEDS_MAINTAINER}),
]


@pytest.mark.parametrize("clone_method,group_access,expected", SHARE_CASES,
                         ids=[f"{m}-share{a}" for m, a, _ in SHARE_CASES])
async def test_clone_credential_through_a_group_share(inproc_hub, clone_method, group_access,
                                                      expected):
    hub = await inproc_hub(_gitlab_config(clone_method, KNOWN))
    hub.gitlab.add_group("partners")
    for user, role in (("pia", 40), ("dan", 30)):
        hub.gitlab.add_user(user, password=f"{user}-pw")
        hub.gitlab.add_member("partners", user, role)
    hub.gitlab.share_project("demo/hello", "partners", group_access)
    await _each_gets(hub, expected)
