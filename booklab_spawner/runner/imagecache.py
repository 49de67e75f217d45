"""The runner's image cache on disk: which images it holds, and eviction.

Every launch records ``image -> time`` in ``images:<runner>``. Past the
operator's budget (``--image-budget``), images are removed least recently
launched first. Only images this runner built or launched, whose name starts
with the hub's ``image_prefix``, are candidates; an image a container uses is
never removed. Sizes are Docker's own per-image sizes (``docker images``), so
layers shared between images count once per image: the budget errs on the
side of removing too much rather than too little.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from ..keys import Keys
from .containers import Launcher

log = logging.getLogger(__name__)


class ImageCache:
    def __init__(self, redis: aioredis.Redis, keys: Keys, runner_id: str,
                 launcher: Launcher, budget: int):
        self.redis = redis
        self.key = keys.images(runner_id)
        self.launcher = launcher
        self.budget = budget  # bytes; 0: no limit
        self.held: list[str] = []  # images present, for the runner record

    async def touch(self, image: str) -> None:
        """Record that ``image`` was just built or launched."""
        await self.redis.hset(self.key, image, str(time.time()))

    async def latest(self, repo: str) -> str | None:
        """The image of ``repo`` (see ``imagekey.image_repo``) launched last here."""
        launched = await self.redis.hgetall(self.key)
        mine = [(float(t), image) for image, t in launched.items()
                if image.startswith(repo + ":") and _is_time(t)]
        return max(mine)[1] if mine else None

    async def evict(self, prefix: str) -> list[str]:
        """Remove least-recently-launched images until the total fits the budget."""
        present = await self.launcher.images_with_prefix(prefix)
        launched = {k: float(v) for k, v in (await self.redis.hgetall(self.key)).items()}
        gone = [image for image in launched if image not in present]
        if gone:
            await self.redis.hdel(self.key, *gone)
        mine = {image: size for image, size in present.items() if image in launched}
        self.held = sorted(mine)
        total = sum(mine.values())
        if not self.budget or total <= self.budget:
            return []
        in_use = await self.launcher.images_in_use()
        removed = []
        for image in sorted(mine, key=lambda i: launched[i]):
            if total <= self.budget:
                break
            if image in in_use or not await self.launcher.remove_image(image):
                continue
            log.info("evicted image %s (%d bytes) to stay within %d bytes",
                     image, mine[image], self.budget)
            await self.redis.hdel(self.key, image)
            total -= mine[image]
            removed.append(image)
        self.held = sorted(set(self.held) - set(removed))
        return removed


def _is_time(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
