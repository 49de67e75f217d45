"""config.yml: the operator's one file, checked and mapped onto JupyterHub traitlets.

Every setting has a dotted name (``gitlab.url``), a type, a default and, for
secrets, an environment variable that overrides the file. A bad value stops
the hub at start with a message naming the key. ``docs/configuration.md`` lists
every key; :data:`SETTINGS` is the single source of both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from booklab_hub import TEMPLATE_DIR
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
    Setting("hub.connect_url", str, "", "URL at which notebook containers reach the hub "
            "API, e.g. http://10.0.0.2:8081 (default: built from hub_ip/hub_port).",
            check=_opt_url),
    Setting("hub.subdomain_host", str, "", "Serve each person's notebooks on their own "
            "host, <user>.<domain>, e.g. https://hub.example.org gives "
            "https://alice.hub.example.org/user/alice/...; needs a wildcard DNS record and "
            "TLS certificate (docs/deploy.md). Strongly recommended: without it, notebooks "
            "(code from any repository) share the hub's origin. Also the default of "
            "gitlab.callback_url.", check=_origin),
    Setting("hub.named_server_limit_per_user", int, 3, "Servers one person may have "
            "running or starting at a time (0: no limit). Booklab removes a person's "
            "stopped servers to make room for a new launch.", check=_non_negative),
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
    Setting("redis.url", str, DEFAULT_REDIS_URL, "Redis shared with the runners; "
            "put Redis behind a password: redis://:PASSWORD@host:6379/0.",
            env=REDIS_URL_ENV, check=_redis_url, secret=True),
    Setting("redis.key_prefix", str, "booklab:", "Prefix of every Booklab key in Redis.",
            check=_prefix),
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
    Setting("runners.start_timeout", int, 0, "Seconds a launch may take in all before "
            "JupyterHub gives up (0: queue + build + container start timeouts plus a "
            "margin, so that the message says which phase ran out).", check=_non_negative),
    Setting("runners.mem_limit", str, "", "Memory limit per notebook, e.g. 2G (empty: the "
            "runner's --default-mem-limit, 2G unless its operator says otherwise)."),
    Setting("runners.cpu_limit", float, 0.0, "CPU limit per notebook, e.g. 1.5 (0: the runner's "
            "--default-cpu-limit, 1.0 unless its operator says otherwise).",
            check=_non_negative),
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
    return {s.name: _value(s, flat, environ, path) for s in SETTINGS}


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
    c.JupyterHub.db_url = s["hub.db_url"]
    c.JupyterHub.cookie_secret_file = os.path.join(data_dir, "jupyterhub_cookie_secret")
    c.JupyterHub.authenticator_class = "booklab-gitlab"
    c.JupyterHub.spawner_class = "booklab"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = s["hub.named_server_limit_per_user"]
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
        f"http://{s['hub.ip'] or '127.0.0.1'}:{s['hub.port']}/hub/oauth_callback")
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
    if s["runners.start_timeout"]:
        sp.start_timeout = s["runners.start_timeout"]
    if s["runners.mem_limit"]:
        sp.mem_limit = s["runners.mem_limit"]
    if s["runners.cpu_limit"]:
        sp.cpu_limit = s["runners.cpu_limit"]


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
