"""Which launch profile a launch gets: BooklabSpawner's side of ``profiles``.

A launch names a profile in ``user_options["profile"]`` (none: the default one).
It is refused, with a sentence that says why, when the profile is unknown, when
the person is in none of its GitLab groups, when they already run as many servers
of it as it allows, or when no live runner's labels satisfy it (docs/runner.md,
"Labels and profiles").
"""

from __future__ import annotations

from typing import Any

from traitlets import Dict, List, validate
from traitlets.config import Configurable

from . import profiles as P
from .credentials import SpawnFailed
from .keys import DEFAULT_PROFILE
from .registry import alive_labels

NO_RUNNER_ALIVE = "no runner is alive"


class ProfileChoice(Configurable):
    """Mixin of BooklabSpawner: the operator's profiles and the check of a launch's."""

    profiles = List(
        Dict(), config=True,
        help="""Launch profiles (config.yml `profiles:`), each a mapping: name (like a
        server name), description, labels (runner labels it needs, e.g. {gpu: a100}),
        mem_limit (e.g. 16G), cpu_limit (e.g. 4), gpus (a count or "all"), groups
        (GitLab groups whose members may use it; empty: everybody), max_per_user
        (servers of it one person may run at once; 0: no limit). A profile named
        `default` replaces the built-in one (no label: any runner).""",
    )

    @validate("profiles")
    def _check_profiles(self, proposal: dict) -> list:
        P.parse(proposal.value)  # raises with a message naming the profile
        return proposal.value

    @property
    def launch_profiles(self) -> list[P.Profile]:
        """The profiles a launch may name, the default first."""
        return P.parse(self.profiles)

    def profile_named(self, name: str) -> P.Profile:
        for profile in self.launch_profiles:
            if profile.name == name:
                return profile
        offered = ", ".join(p.name for p in self.launch_profiles)
        raise SpawnFailed(f"Unknown launch profile {name[:40]!r}: choose one of {offered}",
                          400)

    async def choose_profile(self, options: dict[str, Any]) -> P.Profile:
        """The launch's profile, checked; SpawnFailed (400) saying why it is refused."""
        name = options.get("profile") or DEFAULT_PROFILE
        if not isinstance(name, str) or not P.NAME.fullmatch(name):
            raise SpawnFailed("A launch profile name is 1-30 of a-z, 0-9 and -", 400)
        profile = self.profile_named(name)
        if profile.groups and not await self._in_groups(profile.groups):
            raise SpawnFailed(f"Launch profile {name!r} is for members of the GitLab "
                              f"group(s) {', '.join(profile.groups)}: you are in none of "
                              "them; pick another profile", 400)
        if profile.max_per_user and self._running_with(name) >= profile.max_per_user:
            raise SpawnFailed(f"You already run {profile.max_per_user} server(s) with launch "
                              f"profile {name!r}, as many as it allows: stop one first", 400)
        runners = await alive_labels(self.store.redis, self.keys)
        # with no runner alive at all a launch waits for one, as it always did
        if runners and not any(profile.satisfied_by(labels) for labels in runners.values()):
            raise SpawnFailed(f"No live runner can take launch profile {name!r} (it needs "
                              f"{_needs(profile)}; {len(runners)} runner(s) alive): "
                              "pick another profile or ask the hub's operator", 400)
        return profile

    async def unserved(self, profile_name: str) -> str | None:
        """Why no live runner would take a job of ``profile_name`` now (None: one would):
        the launch waits, and the queue timeout's message says this."""
        try:
            profile = self.profile_named(profile_name or DEFAULT_PROFILE)
        except SpawnFailed:
            return f"launch profile {profile_name!r} is no longer configured"
        runners = await alive_labels(self.store.redis, self.keys)
        if any(profile.satisfied_by(labels) for labels in runners.values()):
            return None
        if not runners:
            return NO_RUNNER_ALIVE
        return (f"none of the {len(runners)} live runner(s) offers what launch profile "
                f"{profile.name!r} needs ({_needs(profile)})")

    async def _in_groups(self, groups: tuple[str, ...]) -> bool:
        check = getattr(self.authenticator, "member_of_groups", None)
        return bool(check) and await check(self.user, groups)

    def _running_with(self, name: str) -> int:
        """The person's other servers with profile ``name`` that are running or starting."""
        count = 0
        for spawner in self.user.spawners.values():
            if spawner is self or not (spawner.active or spawner.ready):
                continue
            if ((spawner.user_options or {}).get("profile") or DEFAULT_PROFILE) == name:
                count += 1
        return count


def _needs(profile: P.Profile) -> str:
    return ", ".join([f"{k}={v}" for k, v in profile.labels.items()]
                     + ([f"{profile.gpus} GPU(s)"] if profile.gpus else [])) or "any runner"
