"""The user's GitLab token is refreshed before a launch when it expires soon
(in-process hub, the GitLab double's OAuth app issuing the tokens).

A token past its expiry, or closer to it than gitlab.token_min_lifetime, is traded
for a new pair with the refresh token before the spawn: the double rotated the pair
(the old one is dead), the auth state holds the new one, and every GitLab call of
the launch was accepted, so it was made with the new token."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.inproc

OPTIONS = {"project": "demo/hello", "ref": "main"}

CASES = [
    # gitlab config, seconds until the token expires, refreshed before the launch?
    ({}, -60, True),  # expired (the double refuses it too)
    ({}, 60, True),  # within the default token_min_lifetime (1800 s)
    ({}, 2100, False),  # enough left: kept
    ({"token_min_lifetime": 3000}, 2100, True),  # the configured lifetime is the one used
]


async def _token_expiring_in(hub, user: str, seconds: int) -> str:
    """Make the user's token expire in ``seconds`` (in the auth state and, if past, in
    the double); returns it."""
    state = await hub.auth_state(user)
    state["expires_at"] = time.time() + seconds
    if seconds < 0:
        hub.gitlab.expire_token(state["access_token"])
    await hub.user(user).save_auth_state(state)
    return state["access_token"]


def _double_token(hub, access_token: str):
    return hub.gitlab.store.tokens[access_token]


@pytest.mark.parametrize("config,expires_in,refreshed", CASES,
                         ids=["expired", "near-expiry", "fresh-enough", "configured-lifetime"])
async def test_token_refreshed_before_the_launch(inproc_hub, config, expires_in, refreshed):
    hub = await inproc_hub({"gitlab": config})
    await hub.login("alice")
    old = await _token_expiring_in(hub, "alice", expires_in)
    seen = len(hub.gitlab.requests_log)
    request, job = await hub.launch("alice", "one", OPTIONS)
    new = (await hub.auth_state("alice"))["access_token"]
    assert (new != old) is refreshed
    assert _double_token(hub, old).revoked is refreshed  # rotation kills the old pair
    assert not _double_token(hub, new).revoked and not _double_token(hub, new).expired()
    launch_calls = [r for r in hub.gitlab.requests_log[seen:] if r[1].startswith("/api/v4/")]
    assert launch_calls and all(status == 200 for _, _, status in launch_calls), launch_calls
    assert job["user"] == "alice"
    await hub.end_launch(request, job["id"])


async def test_a_dead_refresh_token_means_a_new_login(inproc_hub):
    hub = await inproc_hub()
    await hub.login("alice")
    old = await _token_expiring_in(hub, "alice", -60)
    hub.gitlab.revoke_token(old)  # the refresh token dies with it
    # JupyterHub keeps stale auth on API requests; GitLab then refuses the old token
    assert await hub.spawn_error("alice", "one", OPTIONS) == (
        403, "Your GitLab login has expired or was revoked: log out and log in again")
    assert await hub.jobs("alice") == [] and await hub.store.queued() == []
