"""How a runner notices notebook containers exiting: one Docker event stream for
all of them (``runner/exits.py``), so that its slots cost no thread."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
import threading

import pytest

import docker
from booklab_spawner.runner.containers import LABEL_RUNNER, Launcher
from tests.services import NOTEBOOK_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# The cheapest notebook a hub can legitimately ask for: the job's command is the
# hub's Spawner.cmd (an operator's setting), and the runner appends --ip/--port.
# It listens there (so the job reaches "running") and ends on SIGTERM as
# jupyterhub-singleuser does, so that a stop is quick.
LISTENER = (
    "import signal, socket, sys\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "opt = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--'))\n"
    "s = socket.create_server((opt['ip'], int(opt['port'])))\n"
    "while True:\n"
    "    s.accept()[0].close()\n"
)
SLOTS = 40


async def test_runner_with_40_slots_starts_stops_and_notices_exits(
        launcher, rt_runners, rt_docker, demo_project):
    """40 notebooks on one runner, as an operator deploys it (bridge network, the
    runner's default limits), then stops, a kill from outside and a new launch.

    Why 40: asyncio's default thread pool has min(32, CPUs + 4) threads; a runner
    that holds one thread per running notebook (``container.wait()``) starves every
    other Docker call once more notebooks run than that, on any machine: here
    (2 CPUs, 6 threads) the seventh job never gets past its next Docker call and
    this test times out waiting for it to run.
    """
    launcher.conf.network = "bridge"
    rt_runners.start("many", f"--slots={SLOTS}")
    sha = demo_project.commit("demo/hello", "main", {})
    cmd = ["python3", "-c", LISTENER]
    jobs = [await launcher.launch("demo/hello", sha, cmd=cmd) for _ in range(SLOTS)]
    running = {job_id: await launcher.wait_state(job_id, "running") for job_id in jobs}
    containers = {job_id: job["container"] for job_id, job in running.items()}
    assert len(set(containers.values())) == SLOTS

    stopped, killed, rest = jobs[:3], jobs[3], jobs[4:]
    for job_id in stopped:
        assert (await launcher.stop(job_id))["state"] == "stopped"
    await asyncio.to_thread(rt_docker.containers.get(containers[killed]).kill)
    job = await launcher.wait_state(killed, ("failed", "stopped"))
    assert job["state"] == "failed"
    assert job["exit_code"] == "137"
    assert job["error"] == "The notebook server exited with code 137"

    for job_id in rest:  # the others were left alone
        assert (await launcher.store.get(job_id))["state"] == "running"
        assert rt_docker.containers.get(containers[job_id]).status == "running"
    late = await launcher.launch("demo/hello", sha, cmd=cmd)  # a freed slot takes a job
    assert (await launcher.wait_state(late, ("running", "failed")))["state"] == "running"
    assert (await launcher.stop(late))["state"] == "stopped"


class DockerRelay:
    """A Unix socket that relays to the Docker engine, and that a test can cut:
    ``cut()`` closes every open connection and refuses new ones until ``mend()``;
    ``refused`` is set once it refused one."""

    def __init__(self, target: str = "/var/run/docker.sock"):
        self.target = target
        self.path = os.path.join(tempfile.mkdtemp(prefix="booklab-relay-"), "docker.sock")
        self.open = True
        self.refused = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(self.path)
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            with self._lock:  # with cut(): no connection outlives a cut
                if not self.open:
                    client.close()
                    upstream.close()
                    self.refused.set()
                    continue
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self.open = False
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self._server.close()
        os.unlink(self.path)
        os.rmdir(os.path.dirname(self.path))


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def exits_runner(rt_docker):
    """A runner id for containers this test starts itself (removed after it)."""
    runner_id = f"rt-exits-{secrets.token_hex(4)}"
    yield runner_id
    for c in rt_docker.containers.list(all=True,
                                       filters={"label": f"{LABEL_RUNNER}={runner_id}"}):
        c.remove(force=True)


def _sleeper(client, runner_id: str, code: int | None = None):
    """A labelled container that sleeps (or exits with ``code`` at once)."""
    script = f"import sys; sys.exit({code})" if code is not None else \
        "import time; time.sleep(3600)"
    return client.containers.run(NOTEBOOK_IMAGE, ["python3", "-c", script], detach=True,
                                 labels={LABEL_RUNNER: runner_id}, network_mode="none")


async def test_watcher_notices_deaths_before_and_after_wait(rt_docker, exits_runner):
    launcher = Launcher(exits_runner, "127.0.0.1", client=rt_docker)
    await launcher.exits.start()
    try:
        early = await asyncio.to_thread(_sleeper, rt_docker, exits_runner, 3)
        await asyncio.to_thread(early.wait)  # dead before anyone waits for it
        late = await asyncio.to_thread(_sleeper, rt_docker, exits_runner)
        waiting = asyncio.ensure_future(launcher.wait_exit(late.id))
        assert (await launcher.wait_exit(early.id)).code == 3
        assert not waiting.done()  # still running: nothing resolved it
        await asyncio.to_thread(late.kill)
        assert (await waiting).code == 137
    finally:
        await launcher.close()
    assert "booklab-exits" not in {t.name for t in threading.enumerate()}


async def test_a_cancelled_waiter_leaves_the_others_waiting(rt_docker, exits_runner):
    """Two wait for one container (the warm pool's watch, then the job's): the first
    is cancelled; the second still learns of the death, and so does a third that
    comes after the cancel."""
    launcher = Launcher(exits_runner, "127.0.0.1", client=rt_docker)
    await launcher.exits.start()
    try:
        sleeper = await asyncio.to_thread(_sleeper, rt_docker, exits_runner)
        first = asyncio.ensure_future(launcher.exits.wait(sleeper.id))
        second = asyncio.ensure_future(launcher.exits.wait(sleeper.id))
        await asyncio.sleep(0.5)  # both registered and checked once
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        third = asyncio.ensure_future(launcher.exits.wait(sleeper.id))
        await asyncio.sleep(0.5)
        assert not second.done() and not third.done()
        await asyncio.to_thread(sleeper.kill)
        assert await asyncio.wait_for(second, 60) == 137
        assert await asyncio.wait_for(third, 60) == 137
        assert first.cancelled()
    finally:
        await launcher.close()
        await asyncio.to_thread(sleeper.remove, force=True)


async def test_watcher_reconnect_loses_no_death(rt_docker, exits_runner):
    """The watcher's connection to Docker breaks and stays down while a container
    dies; once Docker answers again, that death is noticed; a living one is not."""
    relay = DockerRelay()
    client = docker.DockerClient(base_url=f"unix://{relay.path}", version="auto")
    launcher = Launcher(exits_runner, "127.0.0.1", client=client)
    await launcher.exits.start()
    try:
        first, dying, living = [await asyncio.to_thread(_sleeper, rt_docker, exits_runner)
                                for _ in range(3)]
        waits = {c.id: asyncio.ensure_future(launcher.wait_exit(c.id))
                 for c in (first, dying, living)}
        await asyncio.to_thread(first.kill)
        assert (await waits[first.id]).code == 137  # seen on the first connection
        relay.cut()
        await asyncio.to_thread(dying.kill)
        await asyncio.to_thread(dying.wait)  # dead while the watcher cannot listen
        assert await asyncio.to_thread(relay.refused.wait, 60)  # it tried again, in vain
        assert not waits[dying.id].done()
        relay.mend()
        assert (await waits[dying.id]).code == 137
        assert launcher.exits.connects >= 2
        assert not waits[living.id].done()
    finally:
        await launcher.close()
        client.close()
        relay.close()
