"""What the hub publishes to runners in the signed ``conf`` hash: BooklabSpawner's
settings of the runners' side (network, image names, timeouts, warm servers), and
:meth:`RunnerSettings.runner_conf`, which builds that hash's content from them."""

from __future__ import annotations

import dataclasses
from typing import Any

from traitlets import Bool, Integer, Unicode, validate
from traitlets.config import Configurable

from . import runnerconf as confmod


class RunnerSettings(Configurable):
    """Mixin of BooklabSpawner (``c.BooklabSpawner.<name>`` configures each); the
    spawner gives ``gitlab_url``, ``hub`` and ``launch_profiles``."""

    ssh_known_hosts = Unicode(
        config=True,
        help="""known_hosts lines for GitLab's SSH host keys, published to runners for
        deploy-key clones (e.g. the output of `ssh-keyscan gitlab.example.org`).""",
    )

    runner_network = Unicode(
        "bridge", config=True,
        help="""How runners connect notebook containers: 'bridge' publishes the notebook's
        port on the runner's advertised address; 'host' shares the runner's network
        (single-machine setups and tests).""",
    )

    image_prefix = Unicode(
        "booklab/", config=True,
        help="Prefix of the image names runners build, e.g. 'booklab/'.",
    )

    queue_timeout = Integer(
        600, config=True,
        help="""Seconds a launch may wait for a runner to take it (e.g. 600). When it
        runs out the launch fails saying whether no runner is alive or all are busy.""",
    )

    build_timeout = Integer(
        3600, config=True,
        help="Seconds a runner lets fetching and one repo2docker build take (e.g. 3600).",
    )

    container_start_timeout = Integer(
        300, config=True,
        help="""Seconds from starting the notebook container until it listens (e.g. 300).""",
    )

    warm_servers = Integer(
        1, config=True,
        help="""Warm notebook containers each runner may keep, at most (e.g. 1; 0: none):
        for images launched in the last warm_ttl seconds, a runner keeps a notebook
        server started and waiting, within its free slots, and binds it to the next
        launch of that image (docs/runner.md, "Warm servers"). Published to runners.""",
    )

    warm_ttl = Integer(
        600, config=True,
        help="""Seconds after an image's last launch during which runners keep a warm
        container for it (e.g. 600); an unused one is removed then.""",
    )

    prestart = Bool(
        False, config=True,
        help="""Runners start the notebook container while the commit is fetched, from
        the image the project's last launch on that runner used, and bind it when the
        commit needs that image (docs/runner.md, "Prestart"). Published to runners.""",
    )

    @validate("warm_servers", "warm_ttl")
    def _check_warm(self, proposal: dict) -> int:
        if proposal.value < 0:
            raise ValueError(f"{proposal.trait.name} must not be negative")
        return proposal.value

    build_grace = Integer(
        120, config=True,
        help="""Seconds the hub waits beyond build_timeout before it fails a launch whose
        runner has not reported the end of its fetch and build (e.g. 120). The runner
        enforces build_timeout itself and reports; this covers a runner that froze or
        lost Redis before its heartbeat expired. 0: give up at build_timeout.""",
    )

    @validate("build_grace")
    def _check_grace(self, proposal: dict) -> int:
        if proposal.value < 0:
            raise ValueError("build_grace must not be negative")
        return proposal.value

    @validate("queue_timeout", "build_timeout", "container_start_timeout")
    def _check_timeout(self, proposal: dict) -> int:
        if proposal.value <= 0:
            raise ValueError(f"{proposal.trait.name} must be greater than 0")
        return proposal.value

    def runner_conf(self) -> confmod.RunnerConf:
        extra: dict[str, Any] = {}
        if "ssh_known_hosts" in {f.name for f in dataclasses.fields(confmod.RunnerConf)}:
            extra["ssh_known_hosts"] = self.ssh_known_hosts
        return confmod.RunnerConf(
            gitlab_url=self.gitlab_url, network=self.runner_network, hub_url=self.hub.url,
            image_prefix=self.image_prefix, build_timeout=self.build_timeout,
            container_start_timeout=self.container_start_timeout,
            warm_servers=self.warm_servers, warm_ttl=self.warm_ttl, prestart=self.prestart,
            profiles=[p.as_dict() for p in self.launch_profiles], **extra,
        ).validate()
