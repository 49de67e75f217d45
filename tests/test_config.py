"""config.yml is checked at start; a bad value names its key; env overrides secrets."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from booklab_hub.config import SETTINGS, ConfigError, load

REPO = Path(__file__).resolve().parent.parent
GOOD = {
    "gitlab": {"url": "https://gitlab.example.org", "client_id": "id", "client_secret": "s"},
    "runners": {"token": "x" * 40},
}


def write(tmp_path, data):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_good_config_loads_with_defaults(tmp_path):
    s = load(write(tmp_path, GOOD), environ={})
    assert s["gitlab.url"] == "https://gitlab.example.org"
    assert s["redis.url"] == "redis://127.0.0.1:6379/0"
    assert s["runners.network"] == "bridge"
    assert set(s) == {x.name for x in SETTINGS}


def test_environment_overrides_secrets(tmp_path):
    env = {"GITLAB_CLIENT_SECRET": "from-env", "BOOKLAB_RUNNER_TOKEN": "e" * 40,
           "BOOKLAB_REDIS_URL": "redis://redis:6379/1"}
    s = load(write(tmp_path, GOOD), environ=env)
    assert s["gitlab.client_secret"] == "from-env"
    assert s["runners.token"] == "e" * 40
    assert s["redis.url"] == "redis://redis:6379/1"


@pytest.mark.parametrize("patch,key", [
    ({"gitlab": {"url": "gitlab.example.org"}}, "gitlab.url"),
    ({"gitlab": {"client_id": ""}}, "gitlab.client_id"),
    ({"runners": {"token": "short"}}, "runners.token"),
    ({"runners": {"network": "overlay"}}, "runners.network"),
    ({"runners": {"build_timeout": 0}}, "runners.build_timeout"),
    ({"runners": {"build_timeout": "soon"}}, "runners.build_timeout"),
    ({"redis": {"url": "http://redis"}}, "redis.url"),
    ({"redis": {"key_prefix": "a b"}}, "redis.key_prefix"),
    ({"runner": {"slots": 2}}, "runner.slots"),  # typo'd section: unknown key
])
def test_bad_values_name_their_key(tmp_path, patch, key):
    data = {k: dict(v) for k, v in GOOD.items()}
    for section, values in patch.items():
        data.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, data), environ={})
    assert key in str(exc.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "nope.yml"), environ={})
    bad = tmp_path / "bad.yml"
    bad.write_text("gitlab: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load(str(bad), environ={})


def run_hub_config(tmp_path, env):
    """Load jupyterhub_config.py the way JupyterHub does, in a fresh process."""
    code = ("from traitlets.config.loader import PyFileConfigLoader as L; "
            f"c = L('jupyterhub_config.py', path={str(REPO)!r}).load_config(); "
            "print(c.BooklabGitLabAuthenticator.gitlab_url, c.JupyterHub.spawner_class)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=tmp_path)


def test_hub_refuses_to_start_without_crypt_key(tmp_path):
    env = {"BOOKLAB_CONFIG": write(tmp_path, GOOD), "PATH": "/usr/bin:/bin"}
    r = run_hub_config(tmp_path, env)
    assert r.returncode != 0
    assert "JUPYTERHUB_CRYPT_KEY" in r.stderr


def test_hub_config_maps_onto_traitlets(tmp_path):
    env = {"BOOKLAB_CONFIG": write(tmp_path, GOOD), "PATH": "/usr/bin:/bin",
           "JUPYTERHUB_CRYPT_KEY": "k" * 64}
    r = run_hub_config(tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["https://gitlab.example.org", "booklab"]


def test_hub_config_exit_message_names_the_key(tmp_path):
    env = {"BOOKLAB_CONFIG": write(tmp_path, {**GOOD, "runners": {"token": "x"}}),
           "PATH": "/usr/bin:/bin", "JUPYTERHUB_CRYPT_KEY": "k" * 64}
    r = run_hub_config(tmp_path, env)
    assert r.returncode != 0 and "runners.token" in r.stderr


def test_configuration_reference_is_generated_from_settings():
    """docs/configuration.md lists every key with its help (regenerate: python -m
    booklab_hub.config > docs/configuration.md)."""
    from booklab_hub.config import reference_markdown

    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == reference_markdown()
    for s in SETTINGS:
        assert f"| `{s.name}` |" in doc


@pytest.mark.parametrize("method", ["auto", "deploy_key", "token"])
def test_clone_method_reaches_spawner_and_authenticator(tmp_path, method):
    from traitlets.config import Config

    from booklab_hub.auth import SCOPES, BooklabGitLabAuthenticator
    from booklab_hub.config import apply
    from booklab_spawner.spawner import BooklabSpawner

    c = Config()
    apply(c, load(write(tmp_path, {**GOOD, "gitlab": {**GOOD["gitlab"],
                                                      "clone_method": method}}), environ={}))
    auth = BooklabGitLabAuthenticator(config=c)
    assert auth.clone_method == method and auth.scope == SCOPES[method]
    assert auth.enable_auth_state and auth.refresh_pre_spawn and auth.refresh_pre_stop
    spawner = BooklabSpawner(config=c, authenticator=auth)
    assert spawner.clone_method == method  # read from its one owner, the authenticator
    assert spawner.gitlab_url == auth.gitlab_url == GOOD["gitlab"]["url"]
    assert c.JupyterHub.cleanup_servers is False  # a hub restart keeps the notebooks


def test_clone_method_is_checked(tmp_path):
    data = {**GOOD, "gitlab": {**GOOD["gitlab"], "clone_method": "ssh"}}
    with pytest.raises(ConfigError, match="gitlab.clone_method must be one of"):
        load(write(tmp_path, data), environ={})


def test_timeouts_map_onto_the_spawner_and_bound_jupyterhubs_own(tmp_path):
    from traitlets.config import Config

    from booklab_hub.config import apply
    from booklab_spawner.spawner import BooklabSpawner

    c = Config()
    runners = {**GOOD["runners"], "queue_timeout": 30, "build_timeout": 900,
               "build_grace": 70, "container_start_timeout": 45}
    apply(c, load(write(tmp_path, {**GOOD, "runners": runners}), environ={}))
    spawner = BooklabSpawner(config=c)
    assert (spawner.queue_timeout, spawner.build_timeout, spawner.build_grace,
            spawner.container_start_timeout) == (30, 900, 70, 45)
    # JupyterHub's own limit outlasts ours, so our message (which phase, why) wins
    assert spawner.start_timeout > 30 + 900 + 70 + 45
    assert BooklabSpawner().build_grace == 120
    with pytest.raises(Exception, match="queue_timeout must be greater than 0"):
        BooklabSpawner(queue_timeout=0)
    with pytest.raises(Exception, match="build_grace must not be negative"):
        BooklabSpawner(build_grace=-1)
    with pytest.raises(ConfigError, match="runners.build_grace"):
        load(write(tmp_path, {**GOOD, "runners": {**runners, "build_grace": -1}}), environ={})


def test_container_start_timeout_is_published_to_runners_signed(tmp_path):
    """runners.container_start_timeout reaches the conf hash runners read (it used to
    stop at the hub, and runners gave up after a hard-coded 60 s)."""
    from jupyterhub.objects import Hub
    from traitlets.config import Config

    from booklab_hub.config import apply
    from booklab_spawner.crypto import Signer
    from booklab_spawner.runnerconf import RunnerConf
    from booklab_spawner.spawner import BooklabSpawner

    c = Config()
    runners = {**GOOD["runners"], "container_start_timeout": 90}
    apply(c, load(write(tmp_path, {**GOOD, "runners": runners}), environ={}))
    spawner = BooklabSpawner(config=c, hub=Hub(base_url="/hub/"))
    conf = spawner.runner_conf()
    assert conf.container_start_timeout == 90
    mapping = conf.to_hash()
    assert RunnerConf.from_hash(mapping).container_start_timeout == 90
    signer = Signer("t" * 40)
    sig = signer.sign("conf", mapping)
    assert not signer.valid("conf", {**mapping, "container_start_timeout": "3600"}, sig)
    assert RunnerConf.from_hash({}).container_start_timeout == 300  # an older hub's conf
    with pytest.raises(ValueError, match="container_start_timeout must be greater than 0"):
        RunnerConf(container_start_timeout=0).validate()


@pytest.mark.parametrize("hub_ip, bound", [("0.0.0.0", "0.0.0.0"), ("10.0.0.2", "10.0.0.2"),
                                           ("::", "::")])
def test_hub_binds_hub_ip_while_announcing_connect_url(tmp_path, hub_ip, bound):
    """With a connect_url on another address (a published port, as in docker compose),
    the hub still listens on hub_ip:hub_port: JupyterHub alone would bind to
    connect_url's address and fail (Errno 99)."""
    from jupyterhub.objects import Hub
    from traitlets.config import Config

    from booklab_hub.config import apply

    c = Config()
    hub = {"hub_ip": hub_ip, "hub_port": 8081, "connect_url": "http://192.0.2.7:18081"}
    apply(c, load(write(tmp_path, {**GOOD, "hub": hub}), environ={}))
    # as JupyterHub.init_hub builds its Hub from these two
    h = Hub(bind_url=c.JupyterHub.hub_bind_url, base_url="/hub/")
    h.connect_url = c.JupyterHub.hub_connect_url + "/hub/"
    assert (h.ip, h.port) == (bound, 8081)
    assert h.host == "http://192.0.2.7:18081"


def test_connect_url_and_key_prefix_come_from_the_environment_as_compose_sets_them(
        tmp_path):
    """docker compose hands the hub the values Traefik and the runners share with it
    (.env is their one owner); the variable wins over config.yml."""
    data = {**GOOD, "hub": {"connect_url": "http://10.0.0.9:8081"},
            "redis": {"key_prefix": "file:"}}
    env = {"BOOKLAB_HUB_CONNECT_URL": "http://192.0.2.7:18081",
           "BOOKLAB_REDIS_KEY_PREFIX": "bl-compose:"}
    s = load(write(tmp_path, data), environ=env)
    assert s["hub.connect_url"] == "http://192.0.2.7:18081"
    assert s["redis.key_prefix"] == "bl-compose:"
    with pytest.raises(ConfigError, match=r"hub.connect_url \(or \$BOOKLAB_HUB_CONNECT_URL\)"):
        load(write(tmp_path, GOOD), environ={"BOOKLAB_HUB_CONNECT_URL": "10.0.0.9:8081"})


@pytest.mark.parametrize("hub,spawns,active", [
    ({}, 100, 0),  # JupyterHub's own defaults, set explicitly
    ({"concurrent_spawn_limit": 600, "active_server_limit": 250}, 600, 250),
    ({"concurrent_spawn_limit": 0}, 0, 0),
])
def test_spawn_limits_reach_jupyterhub(tmp_path, hub, spawns, active):
    """A burst of launches (docs/performance.md) queues behind JupyterHub's
    concurrent_spawn_limit; the operator raises it in config.yml."""
    from traitlets.config import Config

    from booklab_hub.config import apply

    c = Config()
    apply(c, load(write(tmp_path, {**GOOD, "hub": hub}), environ={}))
    assert c.JupyterHub.concurrent_spawn_limit == spawns
    assert c.JupyterHub.active_server_limit == active


@pytest.mark.parametrize("key", ["concurrent_spawn_limit", "active_server_limit"])
def test_spawn_limits_are_not_negative(tmp_path, key):
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, {**GOOD, "hub": {key: -1}}), environ={})
    assert f"hub.{key}" in str(exc.value)


def test_http_max_clients_widens_every_shared_http_client_of_the_hub(tmp_path):
    """oauthenticator's token check and the git proxy use Tornado's shared client, 10
    requests at once by default: a burst of launches queued behind it and failed."""
    from tornado.httpclient import AsyncHTTPClient
    from traitlets.config import Config

    from booklab_hub.config import apply

    saved = AsyncHTTPClient._save_configuration()
    try:
        apply(Config(), load(write(tmp_path, GOOD), environ={}))
        assert AsyncHTTPClient(force_instance=True).max_clients == 100
        apply(Config(), load(write(tmp_path, {**GOOD, "hub": {"http_max_clients": 250}}),
                             environ={}))
        assert AsyncHTTPClient(force_instance=True).max_clients == 250
    finally:
        AsyncHTTPClient._restore_configuration(saved)
