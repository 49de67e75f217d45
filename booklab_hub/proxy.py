"""The public proxy in deployments: Traefik with its routes in Redis.

:class:`BooklabTraefikProxy` is jupyterhub-traefik-proxy's ``TraefikRedisProxy``
(routes written to Redis, each checked live in Traefik's API before JupyterHub
uses it) with three changes:

- it never logs a secret. The base class logs the static config it writes at
  INFO level and the dynamic config at DEBUG, and those carry the Redis password
  and the API's basic-auth hash; a filter on the proxy's logger removes them
  through the project's one scrubber;
- the API's basic-auth hash is bcrypt at cost 4, not 12. Traefik checks the hash
  on every API request, and the hub makes two to four of them per route it adds:
  at cost 12 each took half a second here, 1.6 s of every launch. The password
  is a random token (``openssl rand -hex 32``, or one the hub generates), which
  no number of bcrypt rounds makes harder to guess; the rounds only protect weak,
  human-chosen passwords;
- it looks for a new route in Traefik's API every few ms at first, not after a
  pause of up to 0.2 s;
- before it uses Redis, it asks Redis whether the runners' user
  (``redis.runner_user``) is narrow enough that no runner can write a route
  (:mod:`booklab_spawner.acl`): the hub refuses to start if not, and warns when
  no such user is configured (runners then hold the hub's own credentials).
"""

from __future__ import annotations

import logging

import bcrypt
from jupyterhub.utils import exponential_backoff
from jupyterhub_traefik_proxy.redis import TraefikRedisProxy
from traitlets import Unicode, default

from booklab_spawner import acl
from booklab_spawner.keys import DEFAULT_PREFIX, Keys
from booklab_spawner.scrub import Scrubber


class _ScrubFilter(logging.Filter):
    def __init__(self, scrub: Scrubber):
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class BooklabTraefikProxy(TraefikRedisProxy):
    """TraefikRedisProxy whose log lines carry no password, and whose API answers fast."""

    API_HASH_ROUNDS = 4  # bcrypt cost of the API's basic-auth hash (see the module doc)

    runner_redis_user = Unicode("", config=True, help="""Redis user the runners log in
        as (config.yml redis.runner_user). At start the hub asks Redis (ACL DRYRUN)
        that it cannot touch Traefik's keys or administer Redis, and refuses to start
        if it can. Empty: runners share the hub's user, and the hub warns.""")
    key_prefix = Unicode(DEFAULT_PREFIX, config=True, help="Booklab's Redis key prefix "
                         "(config.yml redis.key_prefix).")

    @default("traefik_api_hashed_password")
    def _quick_hash(self) -> str:
        salt = bcrypt.gensalt(rounds=self.API_HASH_ROUNDS)
        return bcrypt.hashpw(self.traefik_api_password.encode(), salt).decode("ascii")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        scrub = Scrubber()
        scrub.add(self.redis_password)
        # the generated default too (should_start): reading it fixes it for this run
        scrub.add_basic_auth(self.traefik_api_username, self.traefik_api_password)
        scrub.add(self.traefik_api_hashed_password)
        self._scrub_filter = _ScrubFilter(scrub)
        self.log.addFilter(self._scrub_filter)

    async def _wait_for_route(self, routespec):
        """Until Traefik's API shows the route's service and router, checked every few
        ms at first: Traefik applies a change in Redis within milliseconds, and the
        base class's first pause (up to 0.2 s) was most of the wait. (A private hook of
        jupyterhub-traefik-proxy 2.x, which setup.cfg pins.)"""
        async def live() -> bool:
            return (await self._check_for_traefik_service(routespec, "service")
                    and await self._check_for_traefik_service(routespec, "router"))

        await exponential_backoff(live, f"Traefik route for {routespec}: not ready",
                                  start_wait=0.005, scale_factor=1.5, max_wait=1,
                                  timeout=self.check_route_timeout)

    async def start(self):
        await self._check_runner_user()
        await super().start()

    async def _start_external(self):  # the base class's start when should_start is False
        await self._check_runner_user()
        await super()._start_external()

    async def _check_runner_user(self) -> None:
        if not self.runner_redis_user:
            self.log.warning(
                "redis.runner_user is not set: runners log in to Redis as the hub does, "
                "and a runner host could rewrite Traefik's routes (docs/security.md, Redis)")
            return
        errors, warnings = await acl.problems(self.redis, Keys(self.key_prefix),
                                              self.runner_redis_user)
        for warning in warnings:
            self.log.warning("%s", warning)
        if errors:
            raise RuntimeError("; ".join(errors))
        if not warnings:
            self.log.info("Redis user %r of the runners cannot touch the proxy's routes",
                          self.runner_redis_user)

    async def stop(self):
        try:
            await super().stop()
        finally:
            self.log.removeFilter(self._scrub_filter)
