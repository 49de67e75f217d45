"""A notebook container is contained, whatever its repository puts in the image.

Issue 8, item 8: every container runs without capabilities and with
``no-new-privileges`` (a setuid-root binary built into the image gives no
root), under a pids limit (a fork bomb stops there), and with the runner's
default memory/CPU limits when the launch sets none. The network side
(bridge mode) is in test_container_network.py.
"""

from __future__ import annotations

import subprocess

import pytest

from booklab_spawner.runner.app import RunnerApp
from booklab_spawner.runner.containers import ContainerPolicy, limits
from tests.conftest_runner import RT_DOCKERFILE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MARK = "PROBES-DONE"
# The hostile repository: a Dockerfile that plants setuid-root copies of `id`
# and of python in the image (as any repository may do in a RUN step).
SUID_DOCKERFILE = RT_DOCKERFILE + """\
USER root
RUN cp /usr/bin/id /usr/local/bin/suid-id \\
 && cp "$(readlink -f /usr/bin/python3)" /usr/local/bin/suid-python \\
 && chown root:root /usr/local/bin/suid-id /usr/local/bin/suid-python \\
 && chmod 4755 /usr/local/bin/suid-id /usr/local/bin/suid-python
USER 1000
"""

# The notebook command: listen on the runner's --port (so the job is
# "running"), run the probes, print MARK, keep listening.
LISTEN = (
    "import socket, subprocess, sys, os, time, errno\n"
    "port = int([a for a in sys.argv if a.startswith('--port=')][0][7:])\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', port)); s.listen()\n"
)
SERVE = f"print({MARK!r}, flush=True)\nwhile True:\n    s.accept()[0].close()\n"

AS_ROOT = (  # run by the setuid-root python: what an attacker would try as "root"
    "import os\n"
    "print('suid-python euid', os.geteuid())\n"
    "try:\n    open('/etc/shadow').read(); print('shadow READ')\n"
    "except OSError as e: print('shadow denied', e.errno)\n"
    "try:\n    open('/booklab-pwned', 'w').write('x'); print('rootfs WRITTEN')\n"
    "except OSError as e: print('rootfs denied', e.errno)\n"
)
SETUID_PROBES = LISTEN + (
    "def run(*cmd):\n"
    "    r = subprocess.run(cmd, capture_output=True, text=True)\n"
    "    return (r.stdout + r.stderr).strip()\n"
    "print('suid-id', run('/usr/local/bin/suid-id'), flush=True)\n"
    f"print(run('/usr/local/bin/suid-python', '-c', {AS_ROOT!r}), flush=True)\n"
    "status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
    "for k in ('CapEff', 'CapBnd', 'NoNewPrivs'):\n"
    "    print(k, status[k].strip(), flush=True)\n"
) + SERVE

FORKS = 300  # the bomb is bounded so that even an unlimited container leaves the host alive
FORK_BOMB = LISTEN + (
    "pids = []\n"
    f"for i in range({FORKS}):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError as e:\n"
    "        print('fork refused:', errno.errorcode.get(e.errno), flush=True)\n"
    "        break\n"
    "    if pid == 0:\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    pids.append(pid)\n"
    "print('forked', len(pids), flush=True)\n"
    "for p in pids: os.kill(p, 9)\n"
    "for p in pids: os.waitpid(p, 0)\n"
) + SERVE


def output_until_mark(container) -> str:
    """The container's output up to MARK (follows the log; ends if the container does)."""
    lines = []
    for chunk in container.logs(stream=True, follow=True):
        lines.append(chunk.decode(errors="replace"))
        if MARK in "".join(lines):
            break
    return "".join(lines)


@pytest.fixture
def suid_project(demo_project):
    demo_project.add_project("demo/suid", files={"Dockerfile": SUID_DOCKERFILE,
                                                 "README.md": "# setuid\n"})
    demo_project.add_member("demo/suid", "alice", 40)
    return demo_project


async def test_setuid_root_binary_in_the_image_gives_no_root(
        launcher, rt_runners, rt_docker, suid_project):
    rt_runners.start("suid")
    job_id = await launcher.launch("demo/suid", suid_project.commit("demo/suid", "main", {}),
                                   cmd=["python3", "-c", SETUID_PROBES])
    job = await launcher.wait_state(job_id, "running")
    container = rt_docker.containers.get(job["container"])
    out = output_until_mark(container)
    # the setuid bit is ignored: the process stays uid 1000 and cannot act as root
    assert "suid-id uid=1000(jovyan) gid=1000(jovyan) groups=1000(jovyan)" in out, out
    assert "euid=0" not in out
    assert "suid-python euid 1000" in out, out
    assert "shadow denied 13" in out and "shadow READ" not in out, out
    assert "rootfs denied 13" in out and "rootfs WRITTEN" not in out, out
    assert "CapEff 0000000000000000" in out, out
    assert "CapBnd 0000000000000000" in out, out  # nothing to regain, even by exec
    assert "NoNewPrivs 1" in out, out
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert not host["Privileged"]
    assert (await launcher.stop(job_id))["state"] == "stopped"


async def test_fork_bomb_stops_at_the_pids_limit_and_the_runner_goes_on(
        launcher, rt_runners, rt_docker, demo_project):
    runner = rt_runners.start("forks", "--pids-limit=64")
    sha = demo_project.commit("demo/hello", "main", {})
    job_id = await launcher.launch("demo/hello", sha, cmd=["python3", "-c", FORK_BOMB])
    job = await launcher.wait_state(job_id, "running")
    container = rt_docker.containers.get(job["container"])
    out = output_until_mark(container)
    assert container.attrs["HostConfig"]["PidsLimit"] == 64
    assert "fork refused: EAGAIN" in out, out
    forked = int(out.split("forked ", 1)[1].split()[0])
    assert 0 < forked < 64, out  # without the limit all FORKS forks succeed
    # the notebook, the runner and the host are all still there
    assert (await launcher.store.get(job_id))["state"] == "running"
    assert runner.proc.poll() is None
    assert subprocess.run(["true"]).returncode == 0
    assert (await launcher.stop(job_id))["state"] == "stopped"
    # and the runner still launches the next notebook
    again = await launcher.launch("demo/hello", sha)
    assert "hello.ipynb" in launcher.contents((await launcher.wait_state(again, "running"))["url"])
    assert (await launcher.stop(again))["state"] == "stopped"


async def test_runner_defaults_limit_a_launch_that_sets_none(
        launcher, rt_runners, rt_docker, demo_project):
    rt_runners.start("defaults", "--default-mem-limit=300M", "--default-cpu-limit=0.5",
                     "--pids-limit=200")
    job_id = await launcher.launch("demo/hello", demo_project.commit("demo/hello", "main", {}),
                                   mem_limit="", cpu_limit="")
    job = await launcher.wait_state(job_id, "running")
    host = rt_docker.containers.get(job["container"]).attrs["HostConfig"]
    assert host["Memory"] == 300 * 1024 * 1024
    assert host["MemorySwap"] == 300 * 1024 * 1024  # no swap beyond it
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 200
    assert host["CapDrop"] == ["ALL"]
    assert (await launcher.stop(job_id))["state"] == "stopped"


@pytest.mark.parametrize("job,policy,expected", [
    # no limits in the launch: the runner's defaults
    ({}, ContainerPolicy(), {"pids_limit": 1024, "mem_limit": 2 * 1024 ** 3,
                             "memswap_limit": 2 * 1024 ** 3, "nano_cpus": 1_000_000_000}),
    ({"mem_limit": "0", "cpu_limit": "0"}, ContainerPolicy(),
     {"pids_limit": 1024, "mem_limit": 2 * 1024 ** 3, "memswap_limit": 2 * 1024 ** 3,
      "nano_cpus": 1_000_000_000}),
    # the launch's own limits win
    ({"mem_limit": "256m", "cpu_limit": "0.5"}, ContainerPolicy(),
     {"pids_limit": 1024, "mem_limit": "256m", "memswap_limit": "256m",
      "nano_cpus": 500_000_000}),
    # an operator who wants no default limits says 0
    ({}, ContainerPolicy(0, 0, 0), {}),
])
def test_limits_table(job, policy, expected):
    assert limits(job, policy) == expected


def test_runner_options_give_the_documented_defaults():
    app = RunnerApp()
    assert app.container_policy() == ContainerPolicy(1024, 2 * 1024 ** 3, 1.0)
    app.parse_command_line(["--pids-limit=64", "--default-mem-limit=512M",
                            "--default-cpu-limit=1.5"])
    assert app.container_policy() == ContainerPolicy(64, 512 * 1024 ** 2, 1.5)


@pytest.mark.parametrize("args,error", [
    (["--notebook-allow=hub.example.org:8081"], "IPv4ADDRESS:PORT"),
    (["--notebook-allow=10.0.0.5:99999"], "port 1-65535"),
    (["--notebook-deny=10.0.0.0/33"], "IPv4 network"),
    (["--notebook-network=a-name-longer-than-15"], "1-15 characters"),
    (["--notebook-subnet=10.0.0.0/8/8"], "Only one ./. permitted"),
])
def test_runner_network_options_refuse_bad_values(args, error):
    with pytest.raises(Exception, match=error):
        RunnerApp().parse_command_line(args)


def test_runner_network_options_reach_the_network():
    app = RunnerApp()
    app.parse_command_line(["--notebook-allow=10.0.0.5:8081", "--notebook-allow=10.0.0.5:53/udp",
                            "--notebook-deny=10.0.0.0/24", "--notebook-network=nb0",
                            "--redis-url=redis://10.0.0.7:6380/0", "--no-firewall"])
    net = app.notebook_net()
    assert (net.name, net.chains, net.firewall) == ("nb0", ("NB0-IN", "NB0-FWD"), False)
    assert [(r.net, r.port, r.proto) for r in net.allow] == [("10.0.0.5", 8081, "tcp"),
                                                              ("10.0.0.5", 53, "udp")]
    # Redis (from --redis-url) first, then the operator's networks
    assert [(r.net, r.port) for r in net.deny] == [("10.0.0.7", 6380), ("10.0.0.0/24", 0)]
