"""Runners log in to Redis as a user that cannot touch Traefik's routes.

Traefik trusts every key under ``<prefix>traefik/``: a runner host holding the
hub's Redis credentials could route ``/hub/`` to itself and collect logins.
Every runner of the suite already logs in as the user ``booklab_spawner.acl``
defines (``tests/services.runner_redis_url``), so the whole suite shows that
the user can do a runner's work; here an attacker with those credentials tries
what a runner must not, and the hub refuses a runner user that is too wide.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path

import pytest
import redis as syncredis
import requests
import yaml

from booklab_spawner import acl
from booklab_spawner.jobscripts import CLAIM_LUA
from booklab_spawner.keys import Keys
from tests.services import runner_redis_url

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runner_redis(redis_server):
    """(admin client, runner client) on the session's Redis for one prefix."""
    keys = Keys("acltest:")
    admin = syncredis.Redis.from_url(redis_server.url, decode_responses=True)
    runner = syncredis.Redis.from_url(runner_redis_url(redis_server.url, keys.prefix),
                                      decode_responses=True)
    yield admin, runner, keys
    for key in admin.scan_iter("acltest*"):
        admin.delete(key)
    admin.delete("other:job:x")
    admin.close()
    runner.close()


FORBIDDEN = [
    pytest.param(lambda r, k: r.set(f"{k.traefik_root}/http/routers/evil/rule",
                                    "PathPrefix(`/hub/`)"), id="write-a-router"),
    pytest.param(lambda r, k: r.get(f"{k.traefik_root}/http/routers/hub/rule"),
                 id="read-a-router"),
    pytest.param(lambda r, k: r.delete(f"{k.traefik_root}/http/routers/hub/rule"),
                 id="delete-a-router"),
    pytest.param(lambda r, k: r.set(f"{k.proxy_routes}/routes/evil", "{}"),
                 id="write-the-proxys-records"),
    pytest.param(lambda r, k: r.rename(k.job("x"), f"{k.traefik_root}/http/routers/x/rule"),
                 id="rename-into-traefik"),
    pytest.param(lambda r, k: r.eval("return redis.call('SET', KEYS[1], 'x')", 1,
                                     f"{k.traefik_root}/http/routers/evil/rule"),
                 id="script-with-the-key"),
    pytest.param(lambda r, k: r.eval(
        f"return redis.call('SET', '{k.traefik_root}/http/routers/evil/rule', 'x')", 0),
        id="script-naming-the-key-itself"),
    pytest.param(lambda r, k: r.hset(k.conf, "gitlab_url", "http://evil"), id="write-conf"),
    pytest.param(lambda r, k: r.set("other:job:x", "x"), id="another-prefix"),
    pytest.param(lambda r, k: r.flushdb(), id="flushdb"),
    pytest.param(lambda r, k: r.flushall(), id="flushall"),
    pytest.param(lambda r, k: r.config_set("appendonly", "no"), id="config-set"),
    pytest.param(lambda r, k: r.keys("*"), id="keys"),
    pytest.param(lambda r, k: r.scan(0), id="scan"),
    pytest.param(lambda r, k: r.randomkey(), id="randomkey"),
    pytest.param(lambda r, k: r.acl_setuser("evil", enabled=True, commands=["+@all"],
                                            keys=["*"]), id="acl-setuser"),
    pytest.param(lambda r, k: r.script_flush(), id="script-flush"),
    pytest.param(lambda r, k: r.execute_command("FUNCTION", "FLUSH"), id="function-flush"),
    pytest.param(lambda r, k: r.publish("anything", "x"), id="publish"),
    pytest.param(lambda r, k: r.move(k.job("x"), 1), id="move-to-another-db"),
    pytest.param(lambda r, k: r.execute_command("SHUTDOWN", "NOSAVE"), id="shutdown"),
]


REFUSED = r"no permissions|can't access"


@pytest.mark.parametrize("attempt", FORBIDDEN)
def test_a_runner_cannot(runner_redis, attempt):
    admin, runner, keys = runner_redis
    admin.hset(keys.job("x"), "state", "running")  # a key the runner may hold
    admin.set(f"{keys.traefik_root}/http/routers/hub/rule", "PathPrefix(`/hub/`)")
    # NOPERM, or inside a script the same refusal as the script's error
    with pytest.raises(syncredis.exceptions.ResponseError, match=REFUSED):
        attempt(runner, keys)
    assert admin.get(f"{keys.traefik_root}/http/routers/hub/rule") == "PathPrefix(`/hub/`)"
    assert admin.get(f"{keys.traefik_root}/http/routers/evil/rule") is None
    assert admin.hgetall(keys.conf) == {}
    assert admin.exists(keys.job("x"))
    assert admin.ping()


def test_a_runner_does_its_own_work(runner_redis):
    """The allowed half of the rules, key by key (the suite's runners use them all)."""
    admin, runner, keys = runner_redis
    admin.hset(keys.conf, "hub_url", '"http://hub"')
    assert runner.hgetall(keys.conf) == {"hub_url": '"http://hub"'}
    runner.lpush(keys.queue, "j1")
    assert runner.blmove(keys.queue, keys.claimed("r1"), 1, "RIGHT", "LEFT") == "j1"
    runner.sadd(keys.runners, "r1")
    runner.set(keys.heartbeat("r1"), "1", ex=30)
    runner.hset(keys.runner("r1"), "slots", "1")
    runner.hset(keys.job("j1"), "state", "claimed")
    runner.zadd(keys.jobs, {"j1": time.time()})
    runner.xadd(keys.log("j1"), {"message": "fetching"})
    runner.hset(keys.images("r1"), "img", "1")
    runner.set(keys.build_lock("abc"), "r1 j1", ex=10)
    runner.get(keys.token("j1"))
    runner.delete(keys.git_grant("j1"))
    runner.rpush(keys.commands("r1"), "{}")
    assert admin.lrange(keys.claimed("r1"), 0, -1) == ["j1"]


def test_a_runner_claims_a_profile_job_with_the_claim_script(runner_redis):
    """The profile queues, fair-share hashes and wake-up tokens are the runner's too."""
    admin, runner, keys = runner_redis
    admin.rpush(keys.queue_of("gpu"), "j1")
    admin.hset(keys.fair("gpu"), mapping={"j:j1": "1", "u:j1": "alice"})
    admin.rpush(keys.wake("gpu"), "1")
    assert runner.blpop([keys.wake("gpu")], 1) == (keys.wake("gpu"), "1")
    claim = runner.register_script(CLAIM_LUA)
    assert claim(keys=[keys.claimed("r1"), keys.queue_of("gpu"), keys.fair("gpu"),
                       keys.wake("gpu")]) == "j1"
    assert admin.lrange(keys.claimed("r1"), 0, -1) == ["j1"]
    assert admin.hgetall(keys.fair("gpu")) == {"round": "1"}


# -- a real hub behind Traefik ---------------------------------------------------
class _Evil(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"a page of the attacker's"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def evil_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _hijack(client: syncredis.Redis, keys: Keys, target: str) -> None:
    r, s = f"{keys.traefik_root}/http/routers/evil", f"{keys.traefik_root}/http/services/evil"
    with client.pipeline(transaction=True) as pipe:
        pipe.set(f"{s}/loadBalancer/servers/0/url", target)
        pipe.set(f"{r}/rule", "PathPrefix(`/hub/login`)")
        pipe.set(f"{r}/service", "evil")
        pipe.set(f"{r}/priority", "1000000")
        pipe.execute()


def _login_page(hub) -> str:
    return requests.get(f"{hub.url}/hub/login", timeout=10).text


def test_a_runner_cannot_route_the_hub_to_itself(make_hub, redis_server, evil_server):
    """With the runner's credentials the route is refused and the login page stays
    the hub's; with the hub's own (what runners held before), the same keys send
    people's logins to the attacker within moments, so the check can fail."""
    hub = make_hub()
    runner = syncredis.Redis.from_url(runner_redis_url(redis_server.url, hub.key_prefix))
    with pytest.raises(syncredis.exceptions.NoPermissionError):
        _hijack(runner, hub.keys, evil_server)
    time.sleep(1)  # Traefik applies a change within ms (throttle 0): give it plenty
    assert "attacker" not in _login_page(hub)
    assert "Sign in" in _login_page(hub) or "GitLab" in _login_page(hub)

    admin = syncredis.Redis.from_url(redis_server.url)
    _hijack(admin, hub.keys, evil_server)
    deadline = time.monotonic() + 30
    while "attacker" not in _login_page(hub):
        assert time.monotonic() < deadline, "the hub's own credentials could not route"
        time.sleep(0.1)
    for key in admin.scan_iter(f"{hub.keys.traefik_root}/http/*/evil/*"):
        admin.delete(key)
    runner.close()
    admin.close()


def _wide_user(redis_server, name: str) -> str:
    with syncredis.Redis.from_url(redis_server.url) as admin:
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">" + "w" * 32,
                              "~*", "+@all")
    return name


@pytest.mark.parametrize("user, message", [
    ("wide", r"Redis user 'wide' \(redis.runner_user\) may run SET .*traefik/http/routers"),
    ("nobody-here", r"Redis has no user 'nobody-here' \(redis.runner_user\)"),
])
def test_the_hub_refuses_a_runner_user_that_could_write_routes(make_hub, redis_server,
                                                               user, message):
    if user == "wide":
        _wide_user(redis_server, user)
    hub = make_hub({"redis": {"runner_user": user}}, start=False)
    with pytest.raises(Exception) as failed:
        hub.start()
    assert re.search(message, str(failed.value)), str(failed.value)[-2000:]


def test_without_a_runner_user_the_hub_warns(make_hub):
    hub = make_hub({"redis": {"runner_user": ""}})
    assert "redis.runner_user is not set" in hub.process.output()


# -- the shipped compose file carries the same rules ------------------------------
def test_compose_gives_its_runners_the_rules_of_acl_py():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    script = "\n".join(compose["services"]["redis"]["command"])
    line = next(ln.strip() for ln in script.splitlines()
                if ln.strip().startswith("user booklab-runner"))
    # the compose file names the prefix through the shell: $${KEY_PREFIX} is ${KEY_PREFIX} to sh
    expected = " ".join(acl.rules(Keys("PREFIX:")))
    assert line.split(" ", 5)[5].replace("$${KEY_PREFIX}", "PREFIX:") == expected
