"""Secret environment variables of a notebook never sit in Redis in plaintext
(issue 14, item 2), checked through a real hub launch against the real values.

The spawner splits ``get_env()``: names containing TOKEN, SECRET, PASSWORD or KEY
(``_split_env``) travel only in the sealed ``token:<job>`` blob, everything else
in the job record. Here the hub's own ``JUPYTERHUB_API_TOKEN`` and operator-set
variables of each kind are followed from the hub to the container: the values
are real (the token opens the hub's API as the server's user), absent from the
record, the raw blob and the job's log, and absent from everything ``docker
inspect`` shows of the container (its config holds the public variables only),
yet present in the environment of the notebook server's process, which got them
through its stdin (``runner/containers.py``, ``EXEC_ENTRY``).
"""

from __future__ import annotations

import json
import secrets

import pytest
import requests

from tests.conftest_hub import (
    job_secrets,
    jobs_of,
    start_server,
    wait_gone,
    wait_ready,
)
from tests.conftest_stack import Hub

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SECRET_NAMES = ("BOOKLAB_T_SECRET", "Booklab_T_Password", "BOOKLAB_T_API_KEY",
                "BOOKLAB_T_TOKEN")


def job_log(hub: Hub, job_id: str) -> str:
    entries = hub.redis().xrange(hub.keys.log(job_id))
    return "\n".join(json.dumps(fields) for _, fields in entries)


def server_env(container) -> dict[str, str]:
    """The environment of the container's notebook server process (as its user)."""
    out = container.exec_run(["sh", "-c", "for p in /proc/[0-9]*; do "
                              "grep -qa jupyterhub-singleuser $p/cmdline && "
                              "tr '\\0' '\\n' < $p/environ; done"], user="1000")
    text = out.output.decode(errors="replace")
    assert "JUPYTERHUB_SERVICE_URL=" in text, text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_secret_env_reaches_the_server_but_not_the_record_nor_docker_inspect(
        make_hub, hb_runner, docker_client, runner_token):
    values = {name: f"v-{secrets.token_hex(16)}" for name in SECRET_NAMES}
    plain = f"plain-{secrets.token_hex(8)}"
    hub = make_hub(extra_config=f"c.BooklabSpawner.environment = "
                                f"{ {**values, 'BOOKLAB_T_PLAIN': plain}!r}\n")
    runner = hb_runner(hub)
    hub.login("alice", "alice-pw")
    assert start_server(hub, "alice", "env", hub.user_token("alice")).status_code in (201, 202)
    wait_ready(hub, "alice", "env")
    [job] = jobs_of(hub, "alice", "env")

    # the sealed blob carries the real values: JupyterHub's token for this server works
    sealed_env = job_secrets(hub, job["id"], runner_token)["env"]
    api_token = sealed_env["JUPYTERHUB_API_TOKEN"]
    me = requests.get(f"{hub.url}/hub/api/user", timeout=30,
                      headers={"Authorization": f"token {api_token}"})
    assert me.status_code == 200 and me.json()["name"] == "alice", me.text
    assert {n: sealed_env.get(n) for n in SECRET_NAMES} == values
    secret_values = {v for n, v in sealed_env.items() if len(v) >= 8}
    assert api_token in secret_values and set(values.values()) <= secret_values

    # nothing of them in the plaintext record (whose env the public variable is in),
    # nor in the raw blob, nor in the job's log stream
    record = json.dumps(job)
    assert json.loads(job["env"])["BOOKLAB_T_PLAIN"] == plain
    assert not set(json.loads(job["env"])) & set(sealed_env)
    raw_blob = hub.redis().get(hub.keys.token(job['id']))
    log = job_log(hub, job["id"])
    for value in secret_values:
        assert value not in record and value not in raw_blob and value not in log
    assert api_token not in runner.output()

    # docker inspect shows none of them: the container's config has the public variables
    container = docker_client.containers.get(job["container"])
    inspected = json.dumps(container.attrs)
    for value in secret_values:
        assert value not in inspected
    config_env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert config_env["BOOKLAB_T_PLAIN"] == plain
    assert not set(config_env) & set(sealed_env), config_env

    # the notebook server's own process has each of them, with the real value
    env = server_env(container)
    assert env["JUPYTERHUB_API_TOKEN"] == api_token
    assert {n: env.get(n) for n in SECRET_NAMES} == values
    assert env["BOOKLAB_T_PLAIN"] == plain

    hub.api("DELETE", "/users/alice/servers/env")
    wait_gone(hub, "alice", "env")
