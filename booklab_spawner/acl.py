"""The Redis ACL user runners log in as: their keys, their commands, nothing else.

Traefik reads its routes from Redis (``<prefix>traefik/...``) and trusts every key
there: whoever can write one can route ``/hub/`` to a server of their choosing and
collect people's logins. Booklab signs what it writes for runners, but Traefik's
keys cannot be signed. So runners, whose hosts are trusted only with care
(docs/security.md), get a user of their own that can reach only the keys of
:meth:`Keys.runner_patterns` with the commands the protocol needs:

- no key of the proxy (``<prefix>traefik/``, ``<prefix>jupyterhub/``), none of
  another prefix, ``conf`` read-only;
- no administration (``CONFIG``, ``ACL``, ``SHUTDOWN``, ``DEBUG``, ``MONITOR``),
  no ``FLUSHALL``/``FLUSHDB``, ``KEYS``, ``SCAN``, ``RANDOMKEY`` or ``SORT``, no
  ``SCRIPT FLUSH``/``KILL`` and no functions, no pub/sub.

``rules()`` is the one definition; ``acl_line()`` renders it for a Redis ACL file
or ``redis.conf`` (the password only as its SHA-256), ``booklab-redis-acl``
prints that line, and :func:`problems` is the hub's check at start that the user
it was told about is as narrow as this (``redis.runner_user``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from typing import Any

from .keys import DEFAULT_PREFIX, Keys

DEFAULT_USER = "booklab-runner"
PASSWORD_ENV = "BOOKLAB_REDIS_RUNNER_PASSWORD"
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# categories a runner's commands come from, then what is taken away again
_CATEGORIES = ("+@read", "+@write", "+@scripting", "+@transaction", "+@connection",
               "+@blocking")
_TAKEN = ("-@dangerous", "-@admin", "-@pubsub", "-scan", "-randomkey", "-script|flush",
          "-script|kill", "-function", "-fcall", "-fcall_ro", "-move", "-copy", "+select")


def check_user(name: str) -> str:
    if not _USER_RE.fullmatch(name or ""):
        raise ValueError(f"invalid Redis user name: {name!r}")
    return name


def rules(keys: Keys) -> list[str]:
    """ACL rules (after the user name and password) of the runners' user."""
    out = ["resetkeys", "resetchannels", "-@all", *_CATEGORIES, *_TAKEN]
    for pattern, mode in keys.runner_patterns().items():
        out.append(f"~{pattern}" if mode == "RW" else f"%{mode}~{pattern}")
    return out


def acl_line(user: str, password: str, keys: Keys) -> str:
    """``user <name> on #<sha256> <rules>``: one line of an ACL file or redis.conf."""
    if len(password) < 32:
        raise ValueError("the runners' Redis password must have at least 32 characters")
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["user", check_user(user), "reset", "on", f"#{digest}", *rules(keys)])


def setuser_args(user: str, password: str, keys: Keys) -> list[str]:
    """Arguments of ``ACL SETUSER`` for the same user (a live Redis, e.g. in tests)."""
    return acl_line(user, password, keys).split()[1:]


# What the hub asks Redis with ACL DRYRUN (Redis >= 7): the runner user must be
# able to do its work and must not be able to do the rest.
def _must(keys: Keys) -> list[list[str]]:
    p = keys.prefix
    return [["BLMOVE", keys.queue, f"{p}claimed:probe", "RIGHT", "LEFT", "1"],
            ["LMOVE", keys.queue_of("probe"), f"{p}claimed:probe", "RIGHT", "LEFT"],
            ["HSET", keys.fair("probe"), "round", "1"], ["BLPOP", keys.wake("probe"), "1"],
            ["HSET", f"{p}job:probe", "state", "x"], ["HGETALL", keys.conf],
            ["XADD", f"{p}log:probe", "*", "m", "x"]]


def _must_not(keys: Keys) -> list[list[str]]:
    t, j = keys.traefik_root, keys.proxy_routes
    return [["SET", f"{t}/http/routers/probe/rule", "PathPrefix(`/`)"],
            ["GET", f"{t}/http/routers/probe/rule"], ["DEL", f"{t}/http/routers/probe/rule"],
            ["SET", f"{j}/routes/probe", "x"], ["HSET", keys.conf, "probe", "x"],
            ["FLUSHALL"], ["CONFIG", "SET", "appendonly", "no"], ["KEYS", "*"],
            ["ACL", "SETUSER", "probe"], ["SET", "another-prefix:probe", "x"]]


async def problems(redis: Any, keys: Keys, user: str) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about the runners' Redis user, asked of Redis itself.

    Errors mean the user lets a runner do what it must not, or does not exist;
    a warning means the hub could not ask (its own user may not run ``ACL``).
    """
    allowed: list[str] = []
    for cmd in _must_not(keys):
        try:
            answer = await redis.execute_command("ACL", "DRYRUN", user, *cmd)
        except Exception as e:  # redis-py raises ResponseError for NOPERM and unknown users
            text = str(e)
            if "not found" in text:
                return [f"Redis has no user {user!r} (redis.runner_user): create it with "
                        "the line booklab-redis-acl prints (docs/security.md)"], []
            return [], [f"could not check the runners' Redis user {user!r}: {text}"]
        if _ok(answer):
            allowed.append(" ".join(cmd[:2]))
    errors = []
    if allowed:
        errors.append(f"Redis user {user!r} (redis.runner_user) may run {', '.join(allowed)}: "
                      "a runner host could rewrite the proxy's routes; give it the rules "
                      "booklab-redis-acl prints (docs/security.md)")
    missing = []
    for cmd in _must(keys):
        answer = await redis.execute_command("ACL", "DRYRUN", user, *cmd)
        if not _ok(answer):
            missing.append(f"{cmd[0]} {cmd[1]}: {_text(answer)}")
    if missing:
        errors.append(f"Redis user {user!r} cannot do a runner's work ({'; '.join(missing)})")
    return errors, []


def _text(answer: Any) -> str:
    return answer.decode() if isinstance(answer, bytes) else str(answer)


def _ok(answer: Any) -> bool:
    return answer is True or _text(answer) == "OK"


def main(argv: list[str] | None = None) -> int:
    """``booklab-redis-acl``: print the runners' ACL line for an ACL file or redis.conf."""
    parser = argparse.ArgumentParser(
        prog="booklab-redis-acl",
        description="Print the Redis ACL line of the user runners log in as (add it to "
                    "redis.conf or the ACL file; the password appears only as its SHA-256). "
                    f"The password comes from ${PASSWORD_ENV}.")
    parser.add_argument("--key-prefix", default=os.environ.get("BOOKLAB_REDIS_KEY_PREFIX",
                                                              DEFAULT_PREFIX))
    parser.add_argument("--user", default=DEFAULT_USER)
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV, "")
    try:
        print(acl_line(args.user, password, Keys(args.key_prefix)))
    except ValueError as e:
        print(f"booklab-redis-acl: {e} (set ${PASSWORD_ENV})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
