"""config.yml: the operator's one file, checked and mapped onto JupyterHub traitlets.

Every setting has a dotted name (``gitlab.url``), a type, a default and, for
secrets, an environment variable that overrides the file. A bad value stops
the hub at start with a message naming the key. ``docs/configuration.md`` lists
every key; :data:`SETTINGS` (``booklab_hub/settings.py``) is the single source
of both.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from tornado.httpclient import AsyncHTTPClient

from booklab_hub import TEMPLATE_DIR
from booklab_spawner.keys import Keys

from .settings import SETTINGS, ConfigError, Setting

__all__ = ["SETTINGS", "ConfigError", "Setting", "apply", "check_crypt_key", "load",
           "reference_markdown"]


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
