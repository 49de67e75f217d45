"""Booklab's pages inside the hub (picker, launch links, build log, admin).

``handlers_for(app)`` returns the Tornado handlers the authenticator mounts
through ``Authenticator.get_handlers``.
"""

from __future__ import annotations


def handlers_for(app) -> list[tuple]:
    """Handlers to mount under the hub's base URL (none yet: the pages issue adds them)."""
    return []
