"""The public proxy in deployments: Traefik with its routes in Redis.

:class:`BooklabTraefikProxy` is jupyterhub-traefik-proxy's ``TraefikRedisProxy``
(routes written to Redis, each checked live in Traefik's API before JupyterHub
uses it) with one change: it never logs a secret. The base class logs the static
config it writes at INFO level and the dynamic config at DEBUG, and those carry
the Redis password and the API's basic-auth hash; a filter on the proxy's logger
removes them through the project's one scrubber.
"""

from __future__ import annotations

import logging

from jupyterhub_traefik_proxy.redis import TraefikRedisProxy

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
    """TraefikRedisProxy whose log lines carry no password."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        scrub = Scrubber()
        scrub.add(self.redis_password)
        # the generated default too (should_start): reading it fixes it for this run
        scrub.add_basic_auth(self.traefik_api_username, self.traefik_api_password)
        scrub.add(self.traefik_api_hashed_password)
        self._scrub_filter = _ScrubFilter(scrub)
        self.log.addFilter(self._scrub_filter)

    async def stop(self):
        try:
            await super().stop()
        finally:
            self.log.removeFilter(self._scrub_filter)
