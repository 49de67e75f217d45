"""The ``conf`` hash: settings the hub publishes for every runner.

A runner starts with only a Redis URL and a runner token; everything else it
needs comes from here, so that operators configure Booklab in one place (the
hub's ``config.yml``). Values are stored JSON-encoded, one field per setting.

The hub signs the hash (field ``sig``, see :class:`booklab_spawner.crypto.Signer`)
and a runner reads it only through :func:`read`, which refuses an unsigned or
changed hash: a Redis writer cannot redirect clones by editing ``gitlab_url``.
A runner's own ``--gitlab-url``/``--hub-url`` win over these anyway.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis.asyncio as aioredis

from .crypto import Signer
from .exceptions import SignatureError
from .keys import Keys

PROTOCOL_VERSION = 3


@dataclass
class RunnerConf:
    protocol: int = PROTOCOL_VERSION
    gitlab_url: str = ""
    network: str = "bridge"  # "bridge": publish a port; "host": share the host's network
    notebook_port: int = 8888  # port inside the container (bridge mode)
    image_prefix: str = "booklab/"
    build_timeout: int = 3600  # seconds repo2docker may take
    container_start_timeout: int = 300  # seconds from starting the container until it listens
    user_id: int = 1000
    user_name: str = "jovyan"
    ssh_known_hosts: str = ""  # known_hosts lines of GitLab's SSH host(s), for deploy keys
    hub_url: str = ""  # the hub as runners reach it (read-only git proxy), ends with /hub/
    warm_servers: int = 1  # warm notebook containers per runner at most (0: none)
    warm_ttl: int = 600  # seconds after an image's last launch its warm container is kept
    prestart: bool = False  # start the container during the fetch, from the project's last image
    # the launch profiles (profiles.Profile.as_dict): a runner claims from the queues of
    # those its labels satisfy
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> RunnerConf:
        if self.network not in ("bridge", "host"):
            raise ValueError(f"runner network must be 'bridge' or 'host', not {self.network!r}")
        if self.user_id == 0:
            raise ValueError("notebooks never run as root: user_id must not be 0")
        if self.container_start_timeout <= 0:
            raise ValueError("container_start_timeout must be greater than 0, not "
                             f"{self.container_start_timeout!r}")
        if self.warm_servers < 0 or self.warm_ttl < 0:
            raise ValueError("warm_servers and warm_ttl must not be negative")
        if not isinstance(self.prestart, bool):
            raise ValueError(f"prestart must be true or false, not {self.prestart!r}")
        return self

    def to_hash(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> RunnerConf:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for k, v in data.items():
            if k in known:
                values[k] = json.loads(v)
        return cls(**values).validate()


async def publish(redis: aioredis.Redis, keys: Keys, conf: RunnerConf, signer: Signer) -> None:
    """Replace the ``conf`` hash atomically with ``conf``, signed."""
    conf.validate()
    mapping = conf.to_hash()
    mapping["sig"] = signer.sign("conf", mapping)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.conf)
        pipe.hset(keys.conf, mapping=mapping)
        await pipe.execute()


async def read(redis: aioredis.Redis, keys: Keys, signer: Signer) -> RunnerConf | None:
    """The hub's conf, if its signature holds (SignatureError otherwise)."""
    data = await redis.hgetall(keys.conf)
    if not data:
        return None
    signed = {k: v for k, v in data.items() if k != "sig"}
    signer.check("conf", signed, data.get("sig"), "the hub's configuration (conf) in Redis")
    conf = RunnerConf.from_hash(signed)
    if conf.protocol != PROTOCOL_VERSION:
        raise SignatureError(f"the hub speaks Booklab protocol {conf.protocol}, this runner "
                             f"{PROTOCOL_VERSION}: run the same Booklab version on both")
    return conf
