"""The notebook container: labels, limits, published port, and how it ends."""

from __future__ import annotations

import socket

import pytest
from docker.errors import NotFound

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# listens on the --port the runner appends (so the job reaches "running") until the
# test says "go" on it (the runner's own probes say nothing), then misbehaves: no
# timing window, however loaded the machine
LISTEN_THEN = (
    "import socket, sys\n"
    "port = int([a for a in sys.argv if a.startswith('--port=')][0][7:])\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', port)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    if c.recv(2) == b'go':\n"
    "        break\n"
    "    c.close()\n"
)


def say_go(job: dict[str, str]) -> None:
    """Let a LISTEN_THEN notebook go on (job["url"] is http://host:port)."""
    host, port = job["url"].rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"go")


async def test_oom_killed_notebook_fails_with_memory_reason(
        launcher, rt_runners, rt_docker, demo_project):
    rt_runners.start("oom")
    hog = LISTEN_THEN + "print('allocating', flush=True)\nx = b'x' * (300 * 1024 * 1024)\n"
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   cmd=["python3", "-c", hog], mem_limit="64m")
    say_go(await launcher.wait_state(job_id, "running"))
    job = await launcher.wait_state(job_id, ("failed", "stopped"))
    assert job["state"] == "failed"
    assert job["error"] == ("The notebook ran out of memory and was killed "
                            "(the container's memory limit was reached)")
    assert job["exit_code"] == "137"
    assert "allocating" in await launcher.log_text(job_id)  # its last lines are in the log
    with pytest.raises(NotFound):
        rt_docker.containers.get(job["container"])


@pytest.mark.parametrize("code,state", [(3, "failed"), (0, "stopped")])
async def test_notebook_that_exits_by_itself_reports_code_and_last_lines(
        launcher, rt_runners, rt_docker, demo_project, code, state):
    rt_runners.start(f"exit{code}")
    script = LISTEN_THEN + f"print('goodbye from the notebook', flush=True)\nsys.exit({code})\n"
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   cmd=["python3", "-c", script])
    say_go(await launcher.wait_state(job_id, "running"))
    job = await launcher.wait_state(job_id, ("failed", "stopped"))
    assert job["state"] == state
    assert job["exit_code"] == str(code)
    if code:
        assert job["error"] == f"The notebook server exited with code {code}"
    log = await launcher.log_text(job_id)
    assert "Last 1 line(s) of the notebook's output" in log
    assert "goodbye from the notebook" in log
    with pytest.raises(NotFound):
        rt_docker.containers.get(job["container"])


async def test_bridge_container_has_labels_limits_and_a_port_on_the_advertised_address(
        launcher, rt_runners, rt_docker, demo_project):
    launcher.conf.network = "bridge"
    rt_runners.start("bridge")
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   mem_limit="256m", cpu_limit="0.5")
    job = await launcher.wait_state(job_id, "running")
    container = rt_docker.containers.get(job["container"])
    binding = container.attrs["HostConfig"]["PortBindings"]["8888/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    assert job["url"].startswith("http://127.0.0.1:")
    assert "hello.ipynb" in launcher.contents(job["url"])  # reachable where it says
    assert container.attrs["HostConfig"]["Memory"] == 256 * 1024 * 1024
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    labels = container.labels
    assert labels["org.booklab.job"] == job_id
    assert labels["org.booklab.runner"] == "rt-bridge"
    assert labels["org.booklab.user"] == "alice"
    assert labels["org.booklab.project"] == "demo/hello"
    assert launcher.jupyter_token not in str(labels)
    assert (await launcher.stop(job_id))["state"] == "stopped"
    with pytest.raises(NotFound):
        rt_docker.containers.get(job["container"])


async def test_a_notebook_that_dies_before_listening_fails_the_launch_with_its_output(
        launcher, rt_runners, rt_docker, demo_project):
    """The runner's readiness wait ends on the container's death (the exit watcher's
    event), not at the start timeout: the job fails with the code and last lines."""
    rt_runners.start("early-exit")
    script = "import sys\nprint('cannot import jupyterhub', flush=True)\nsys.exit(5)\n"
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   cmd=["python3", "-c", script])
    job = await launcher.wait_state(job_id, ("failed", "stopped", "running"))
    assert job["state"] == "failed", job
    assert job["error"] == "The notebook server exited with code 5 while starting"
    log = await launcher.log_text(job_id)
    assert "cannot import jupyterhub" in log
    assert "did not start within" not in log
